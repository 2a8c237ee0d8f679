"""Run the acceptance sequence and draw one verdict for the node."""

from __future__ import annotations

import time
from collections.abc import Callable

from envkit.accept.report import AcceptReport, Step, node_identity
from envkit.accept.steps import AcceptOptions, Progress, run_step, soak_plan
from envkit.vocab import Status

SEQUENCE = ("doctor", "soak", "memory", "peer", "allreduce", "dcgm", "train")


def resolve_device(device: str) -> str:
    """auto -> gpu when torch sees a CUDA GPU, else cpu."""
    if device != "auto":
        return device
    try:
        import torch

        return "gpu" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"
    except ImportError:
        return "cpu"


def run_accept(
    opts: AcceptOptions,
    *,
    steps: tuple[str, ...] = SEQUENCE,
    progress: Progress | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> AcceptReport:
    """All wanted steps in order. After a failed doctor the rest is skipped (the node is not usable).

    Ctrl-C ends the run with the steps done so far and the report marked incomplete.
    """
    report = AcceptReport(node=node_identity(opts.device), options=opts.to_dict())
    if "soak" in steps:
        report.options["soak_plan"] = soak_plan(
            opts
        ).__dict__  # imports torch before anything can be cut short
    start = time.perf_counter()
    usable = True
    try:
        for name in SEQUENCE:
            if name not in steps:
                continue
            if not usable:
                step = Step(name, Status.NOT_APPLICABLE, "skipped: doctor says the node is not usable")
            else:
                if progress is not None:
                    progress(name, {"started": True})
                step = run_step(name, opts, progress)
            report.steps.append(step)
            if on_step is not None:
                on_step(step)
            if name == "doctor" and step.status in (Status.FAIL, Status.ERROR):
                usable = False
    except KeyboardInterrupt:
        report.incomplete = True
    report.elapsed_s = time.perf_counter() - start
    return report
