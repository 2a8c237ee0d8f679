"""Ansible callback: one JSON file of Ansible's own stats per playbook run.

The Molecule scenarios of ansible/ and tests/ansible read these files instead
of parsing PLAY RECAP text: per-host counts (ok, changed, failed, ...) from
the run's AggregateStats, whether it ran in check mode, and one record per
changed, failed or message-carrying task result (so a test can name the task
that changed or quote the message a play failed with).

Where: $ENVKIT_STATS_DIR, else $MOLECULE_EPHEMERAL_DIRECTORY/envkit-stats.
Name: <monotonic ns>-<playbook>[-check].json, so sorting gives run order.
Enabled with ANSIBLE_CALLBACKS_ENABLED=envkit_stats (the scenarios do).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ansible.plugins.callback import CallbackBase

from ansible import context

DOCUMENTATION = """
name: envkit_stats
type: aggregate
short_description: Write each playbook run's stats as JSON (envkit's Molecule scenarios)
description:
  - Writes per-host stats, check mode and changed/failed/message task results to a JSON file.
requirements:
  - ENVKIT_STATS_DIR or MOLECULE_EPHEMERAL_DIRECTORY in the environment
"""

# Keep the files small: a message is for a human reading a failure.
_MSG_LIMIT = 4000


def stats_dir() -> Path | None:
    """The directory the files go to, or None when neither variable is set."""
    explicit = os.environ.get("ENVKIT_STATS_DIR")
    if explicit:
        return Path(explicit)
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    return Path(ephemeral) / "envkit-stats" if ephemeral else None


class CallbackModule(CallbackBase):
    """Collects task results during the run, writes the file at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "envkit_stats"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._playbook = ""
        self._started = time.monotonic()
        self._tasks: list[dict[str, Any]] = []

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._playbook = Path(playbook._file_name).name
        self._started = time.monotonic()

    def _record(self, result: Any, status: str) -> None:
        res = result._result
        changed = bool(res.get("changed"))
        msg = res.get("msg")
        if status == "ok" and not changed and not msg:
            return
        if status != "ok" and isinstance(res.get("results"), list):
            # A failed loop: its items' messages (e.g. one assert per package).
            items = [
                str(r["msg"])
                for r in res["results"]
                if isinstance(r, dict) and r.get("failed") and r.get("msg")
            ]
            if items:
                msg = "; ".join([str(msg), *items] if msg else items)
        entry: dict[str, Any] = {
            "host": result._host.get_name(),
            "task": result._task.get_name(),
            "status": "changed" if status == "ok" and changed else status,
        }
        if msg:
            entry["msg"] = str(msg)[:_MSG_LIMIT]
        # --diff: what a file would become (check mode's promise, e.g. a template).
        diffs = res.get("diff") or []
        after = [
            d["after"]
            for d in ([diffs] if isinstance(diffs, dict) else diffs)
            if isinstance(d.get("after"), str)
        ]
        if after:
            entry["diff_after"] = "".join(after)[:_MSG_LIMIT]
        self._tasks.append(entry)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result, "unreachable")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._tasks.append(
            {"host": result._host.get_name(), "task": result._task.get_name(), "status": "skipped"}
        )

    def v2_playbook_on_stats(self, stats: Any) -> None:
        directory = stats_dir()
        if directory is None:
            return
        check = bool(context.CLIARGS.get("check"))
        hosts = {host: stats.summarize(host) for host in sorted(stats.processed)}
        data = {
            "playbook": self._playbook,
            "check": check,
            "seconds": round(time.monotonic() - self._started, 1),
            "hosts": hosts,
            "tasks": self._tasks,
        }
        directory.mkdir(parents=True, exist_ok=True)
        stem = Path(self._playbook).stem + ("-check" if check else "")
        final = directory / f"{time.monotonic_ns():020d}-{stem}.json"
        # Written aside, then renamed: a reader never sees half a file.
        tmp = final.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(final)
