"""Time `envkit doctor --json` next to `python -m torch.utils.collect_env`, in one run.

Both are "tell me about this machine's stack" commands; collect_env imports
torch and shells out to nvidia-smi, pip, conda, ... Doctor does more (TF,
Docker, a matmul per framework) but runs its probes concurrently. Each
command runs once unmeasured (page cache), then `--repeats` times
interleaved, so a busy neighbour slows both alike. Writes medians and the
ratio to JSON.

    python benchmarks/doctor_speed.py --repeats 5 --out results/doctor_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from envkit.atomic import atomic_write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def envkit_cmd() -> list[str]:
    script = Path(sys.executable).with_name("envkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "envkit"]


def commands() -> dict[str, list[str]]:
    return {
        "envkit doctor --json": [*envkit_cmd(), "doctor", "--json"],
        # Same scope as collect_env (PyTorch, no TensorFlow).
        "envkit doctor --json --skip tensorflow": [*envkit_cmd(), "doctor", "--json", "--skip", "tensorflow"],
        "python -m torch.utils.collect_env": [sys.executable, "-m", "torch.utils.collect_env"],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(cmd: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (the command and all its children), exit code, stdout."""
    cpu0, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return time.perf_counter() - start, _children_cpu() - cpu0, proc.returncode, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per command (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "doctor_speed.json")
    args = parser.parse_args()

    cmds = commands()
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    codes: dict[str, list[int]] = {name: [] for name in cmds}
    doctor_internal: list[dict] = []
    for _name, cmd in cmds.items():  # warm the page cache; not measured
        time_once(cmd)
    for i in range(args.repeats):
        for name, cmd in cmds.items():
            elapsed, cpu_s, rc, out = time_once(cmd)
            times[name].append(round(elapsed, 3))
            cpu[name].append(round(cpu_s, 3))
            codes[name].append(rc)
            if name == "envkit doctor --json" and rc in (0, 1):
                report = json.loads(out)
                per_area: dict[str, float] = {}
                for check in report["checks"]:
                    area = check["area"]
                    per_area[area] = max(per_area.get(area, 0.0), check["elapsed_s"] or 0.0)
                doctor_internal.append(
                    {"elapsed_s": report["elapsed_s"], "slowest_check_by_area_s": per_area}
                )
            print(
                f"run {i + 1}/{args.repeats}  {name:42s} {elapsed:6.2f} s wall {cpu_s:6.2f} s cpu  exit {rc}",
                file=sys.stderr,
            )

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    baseline = medians["python -m torch.utils.collect_env"]
    result = {
        "benchmark": "doctor_speed",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_after": os.getloadavg(),
            "platform": platform.platform(),
        },
        "repeats": args.repeats,
        "commands": {
            name: {
                "argv": cmds[name],
                "seconds": times[name],
                "median_s": round(medians[name], 3),
                "min_s": min(times[name]),
                "max_s": max(times[name]),
                "exit_codes": codes[name],
                # CPU seconds do not grow with a busy neighbour the way wall time does;
                # cpu/cores is what the command would take on an idle machine at best.
                "cpu_seconds": cpu[name],
                "median_cpu_s": round(statistics.median(cpu[name]), 3),
            }
            for name in cmds
        },
        "ratio_doctor_to_collect_env": round(medians["envkit doctor --json"] / baseline, 3),
        "ratio_doctor_torch_only_to_collect_env": round(
            medians["envkit doctor --json --skip tensorflow"] / baseline, 3
        ),
        "loadavg_before": load_before,
        "ratio_cpu_doctor_to_collect_env": round(
            statistics.median(cpu["envkit doctor --json"])
            / statistics.median(cpu["python -m torch.utils.collect_env"]),
            3,
        ),
        "doctor_target_s": 5.0,
        "doctor_median_under_target": medians["envkit doctor --json"] < 5.0,
        "doctor_internal": doctor_internal,
    }
    atomic_write_json(args.out, result)
    for name in cmds:
        print(f"{name:42s} median {medians[name]:6.2f} s", file=sys.stderr)
    ratio = result["ratio_doctor_to_collect_env"]
    print(f"ratio doctor/collect_env = {ratio}  -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
