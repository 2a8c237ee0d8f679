"""run_process: a real timeout, the whole process group killed, live output, Ctrl-C."""

from __future__ import annotations

import _thread
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from envkit.process import group_members, kill_live_groups, live_groups, run_process

PY = sys.executable


def _code(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


def _wait_for(path: Path, limit_s: float = 60.0) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its reaper (a dead process)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return state[state.rfind(")") + 2 :].split()[0] in ("Z", "X")


def _spawner(pidfile: Path, then: str) -> list[str]:
    """A child that starts a sleeping grandchild (in its group), records both pids, then `then`."""
    return _code(
        f"""
        import os, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pidfile)!r}, "w").write(f"{{os.getpid()}} {{grandchild.pid}}")
        {then}
        """
    )


def test_a_normal_run_returns_status_and_both_streams() -> None:
    result = run_process(
        _code("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"), timeout_s=60
    )
    assert result.returncode == 3 and not result.ok and not result.timed_out
    assert result.stdout == "out\n" and result.stderr == "err\n"
    assert result.tail() == "err"
    ok = run_process(_code("print('x')"), timeout_s=60, merge_stderr=True, stdin_text="")
    assert ok.ok and ok.stdout == "x\n"


def test_stdin_and_cwd_and_env_reach_the_child(tmp_path: Path) -> None:
    result = run_process(
        _code("import os, sys; print(sys.stdin.read().upper(), os.getcwd(), os.environ['K'])"),
        timeout_s=60,
        stdin_text="abc",
        cwd=tmp_path,
        env={"K": "v", "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.split() == ["ABC", str(tmp_path), "v"]


def test_a_missing_program_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        run_process(["/nonexistent/envkit-no-such-program"], timeout_s=5)


def test_timeout_kills_the_child_and_its_grandchildren(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    result = run_process(_spawner(pidfile, "time.sleep(600)"), timeout_s=2, grace_s=1)
    assert result.timed_out and result.returncode is None and not result.ok
    child, grandchild = map(int, pidfile.read_text().split())
    assert _gone(child) and _gone(grandchild)
    assert group_members(child) == []  # the child led the group: nothing of it is left


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    body = f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").write(str(os.getpid()))
        time.sleep(600)
        """
    result = run_process(_code(body), timeout_s=3, grace_s=0.5)
    assert result.timed_out
    child = int(_wait_for(ready))
    assert _gone(child) and group_members(child) == []


def test_orphans_of_a_finished_leader_are_killed(tmp_path: Path) -> None:
    """A launcher that exits leaving a worker behind: the worker must not survive the run."""
    pidfile = tmp_path / "pids"
    result = run_process(_spawner(pidfile, "sys.exit(0)"), timeout_s=60, grace_s=1)
    assert result.returncode == 0 and not result.timed_out
    child, grandchild = map(int, pidfile.read_text().split())
    deadline = time.monotonic() + 10
    while not _gone(grandchild) and time.monotonic() < deadline:  # SIGKILL lands asynchronously
        time.sleep(0.02)
    assert _gone(grandchild) and group_members(child) == []


def test_on_line_sees_each_line_while_the_child_runs(tmp_path: Path) -> None:
    """The child waits for a file that only the on_line callback creates: without live lines
    it would sit there until the timeout."""
    go = tmp_path / "go"
    body = f"""
        import os, time
        print("step 1", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        print("step 2", flush=True)
        """
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "step 1":
            go.write_text("1")

    result = run_process(_code(body), timeout_s=60, on_line=on_line)
    assert not result.timed_out and result.ok
    assert seen == ["step 1", "step 2"] and result.stdout == "step 1\nstep 2\n"


def test_a_broken_progress_callback_does_not_break_the_run() -> None:
    def on_line(line: str) -> None:
        raise RuntimeError("display gone")

    result = run_process(_code("print('a'); print('b')"), timeout_s=60, on_line=on_line)
    assert result.ok and result.stdout == "a\nb\n"


def test_keyboard_interrupt_kills_the_group_and_propagates(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"

    def interrupt_once_running() -> None:
        _wait_for(pidfile)
        _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread

    threading.Thread(target=interrupt_once_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_process(_spawner(pidfile, "time.sleep(600)"), timeout_s=120, grace_s=1)
    child, grandchild = map(int, pidfile.read_text().split())
    assert _gone(child) and _gone(grandchild) and group_members(child) == []
    assert child not in live_groups()


def test_kill_live_groups_ends_runs_waiting_in_other_threads(tmp_path: Path) -> None:
    """doctor's pool threads wait in run_process; Ctrl-C reaches only the main thread."""
    pidfile = tmp_path / "pids"
    results = []
    worker = threading.Thread(
        target=lambda: results.append(run_process(_spawner(pidfile, "time.sleep(600)"), timeout_s=120)),
        daemon=True,
    )
    worker.start()
    child = int(_wait_for(pidfile).split()[0])
    assert child in live_groups()
    kill_live_groups()
    worker.join(timeout=30)
    assert not worker.is_alive()
    (result,) = results
    assert result.returncode == -9 and group_members(child) == [] and live_groups() == []
