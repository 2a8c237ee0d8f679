"""Run a child process with a real timeout: on expiry its whole process group dies.

Launchers (torchrun, a framework probe that forks, `docker run`) start children of
their own; killing only the launcher leaves the workers running and holding the
pipes open, so a reader blocked on stdout never returns. Here the child starts a
new session (its own process group), output is read by threads, the deadline is
kept by the caller's thread, and on timeout or Ctrl-C the group gets SIGTERM, then
SIGKILL after a grace period. When the leader exits on its own, stragglers left in
its group are killed too, so nothing of a finished run survives it.

A KeyboardInterrupt reaches only the main thread: a run_process waiting in a
worker thread (doctor runs its framework probes in a pool) is not interrupted
and its child, in a session of its own, did not see the terminal's Ctrl-C. The
main thread calls `kill_live_groups()` then, which ends every child still running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessResult:
    """What a finished (or killed) child left: exit status, output, and why it ended."""

    argv: tuple[str, ...]
    returncode: int | None  # None when it had to be killed (timeout or interrupt)
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def tail(self, lines: int = 5) -> str:
        """The last non-empty lines of stderr (else stdout), joined with ' | ' for one-line messages."""
        text = self.stderr if self.stderr.strip() else self.stdout
        kept = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:])


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed credentials; the leader at least is ours
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group `pgid`, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """Is any process of group `pgid` still running (zombies waiting for a reaper do not count)?"""
    if not Path("/proc/self/stat").exists():
        return _signal_group(pgid, 0)
    return bool(group_members(pgid))


def kill_group(proc: subprocess.Popen[str], grace_s: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left after `grace_s`."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    if _signal_group(pgid, signal.SIGTERM):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        deadline = time.monotonic() + grace_s
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL is not ignorable
        proc.wait(timeout=grace_s)


# Children of run_process still running, from any thread (see kill_live_groups).
_LIVE: set[subprocess.Popen[str]] = set()
_LIVE_LOCK = threading.Lock()


def live_groups() -> list[int]:
    """Process-group ids of the run_process children running now (one per call in flight)."""
    with _LIVE_LOCK:
        return [proc.pid for proc in _LIVE]


def kill_live_groups() -> None:
    """SIGKILL the whole group of every run_process child still running (Ctrl-C in the main thread)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        _signal_group(proc.pid, signal.SIGKILL)


def _pump(stream, sink: list[str], on_line: Callable[[str], None] | None) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if on_line is not None:
            # a progress display must never break the run it reports
            with contextlib.suppress(Exception):
                on_line(line.rstrip("\n"))
    stream.close()


def run_process(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    on_line: Callable[[str], None] | None = None,
    merge_stderr: bool = False,
    stdin_text: str | None = None,
    grace_s: float = 5.0,
) -> ProcessResult:
    """Run `argv` to completion or until `timeout_s`, whichever comes first.

    `on_line` sees each stdout line as it arrives (progress). A KeyboardInterrupt
    kills the group and propagates. Raises FileNotFoundError when the program is missing.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        errors="replace",
        env=dict(env) if env is not None else None,
        cwd=Path(cwd) if cwd is not None else None,
        start_new_session=True,
    )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=_pump, args=(proc.stdout, out, on_line), daemon=True)]
    if not merge_stderr:
        readers.append(threading.Thread(target=_pump, args=(proc.stderr, err, None), daemon=True))
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        if stdin_text is not None and proc.stdin is not None:
            try:
                proc.stdin.write(stdin_text)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc, grace_s)
        else:
            # The leader is done; workers it orphaned must not outlive it holding our pipes.
            if group_alive(proc.pid):
                _signal_group(proc.pid, signal.SIGKILL)
    except BaseException:
        kill_group(proc, grace_s)
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
        for reader in readers:
            reader.join(timeout=grace_s)
    return ProcessResult(
        argv=tuple(argv),
        returncode=None if timed_out else proc.returncode,
        stdout="".join(out),
        stderr="".join(err),
        duration_s=time.monotonic() - start,
        timed_out=timed_out,
    )
