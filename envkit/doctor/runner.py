"""Run the probes concurrently and assemble the report; no probe may raise through here."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from envkit import __version__
from envkit.doctor.model import AREAS, ERROR, Check, ProbeResult, Report
from envkit.doctor.options import DoctorOptions

Probe = Callable[[DoctorOptions], ProbeResult]


def _probes() -> dict[str, Probe]:
    # Imported here so `envkit --help` never pays for them.
    from envkit.doctor.probes.containers import probe_dcgm, probe_docker
    from envkit.doctor.probes.cuda import probe_cuda
    from envkit.doctor.probes.driver import probe_driver
    from envkit.doctor.probes.fabric import probe_fabric
    from envkit.doctor.probes.frameworks import probe_pytorch, probe_tensorflow
    from envkit.doctor.probes.gpu import probe_gpu
    from envkit.doctor.probes.host import probe_host
    from envkit.doctor.probes.xid import probe_xid

    # The framework probes come first: they are the slowest, the rest overlaps them.
    return {
        "tensorflow": probe_tensorflow,
        "pytorch": probe_pytorch,
        "host": probe_host,
        "driver": probe_driver,
        "gpu": probe_gpu,
        "fabric": probe_fabric,
        "xid": probe_xid,
        "cuda": probe_cuda,
        "docker": probe_docker,
        "dcgm": probe_dcgm,
    }


def run_safely(area: str, fn: Callable[[], ProbeResult]) -> ProbeResult:
    """Call a probe; a crash becomes an `error` check instead of a traceback."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        result = ProbeResult(
            [
                Check(
                    area,
                    "probe",
                    ERROR,
                    f"the {area} probe crashed: {type(exc).__name__}: {exc}"[:400],
                    "an envkit bug: please report it with `envkit doctor --json` attached",
                )
            ]
        )
    elapsed = round(time.perf_counter() - start, 3)
    for check in result.checks:
        if check.elapsed_s is None:
            check.elapsed_s = elapsed
    return result


def _summary_facts(by_area: dict[str, dict[str, Any]]) -> dict[str, Any]:
    gpu = by_area.get("gpu", {})
    return {
        "gpu_count": gpu.get("gpu_count", 0),
        "driver_version": gpu.get("driver_version") or by_area.get("driver", {}).get("kernel_driver_version"),
        "cuda_driver_version": gpu.get("cuda_driver_version"),
        "container": by_area.get("host", {}).get("container"),
        "frameworks": {
            name: {k: v for k, v in by_area[name].items() if k in ("version", "cuda", "gpu_build")}
            for name in ("pytorch", "tensorflow")
            if by_area.get(name, {}).get("version")
        },
        "areas": by_area,
    }


def run_doctor(opts: DoctorOptions, probes: dict[str, Probe] | None = None) -> Report:
    """All wanted probes at once (threads; frameworks in child processes), then compat."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    table = probes if probes is not None else _probes()
    wanted = [a for a in table if opts.wants(a)]
    results: dict[str, ProbeResult] = {}
    if wanted:
        pool = ThreadPoolExecutor(max_workers=len(wanted), thread_name_prefix="doctor")
        try:
            futures = {a: pool.submit(run_safely, a, lambda a=a: table[a](opts)) for a in wanted}
            results = {a: f.result() for a, f in futures.items()}
        except KeyboardInterrupt:
            # Framework children sit in their own sessions: Ctrl-C must be passed on by hand.
            from envkit.process import kill_live_groups

            kill_live_groups()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    by_area = {a: r.facts for a, r in results.items()}

    if opts.wants("compat"):
        from envkit.doctor.compat import compat_checks

        results["compat"] = run_safely("compat", lambda: compat_checks(by_area))
    if opts.deep and opts.wants("docker"):
        from envkit.doctor.probes.containers import gpu_container_smoke

        smoke = run_safely("docker", lambda: ProbeResult([gpu_container_smoke(opts, by_area)]))
        results.setdefault("docker", ProbeResult([])).checks.extend(smoke.checks)

    order = {a: i for i, a in enumerate(AREAS)}
    checks = [c for a in sorted(results, key=lambda a: order.get(a, len(order))) for c in results[a].checks]
    return Report(
        checks=checks,
        facts=_summary_facts(by_area),
        options=opts.to_dict(),
        started=started,
        elapsed_s=time.perf_counter() - start,
        envkit_version=__version__,
    )
