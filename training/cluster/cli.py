"""`envkit train sbatch`: print, write or submit the batch script for N nodes.

Also runnable as `python -m training.cluster sbatch ...` (the same command).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from envkit.cli_support import UsageError, make_app

app = make_app(help="Training across Slurm nodes.")

STAGE = typer.Argument(
    "cycle", help="cycle | prepare | pretrain | finetune | test, or a node check: accept | allreduce"
)
OVERRIDES = typer.Argument(
    None,
    help="key=value overrides for the stage, e.g. engine=tensorflow max_steps=100; for accept and "
    "allreduce: run_dir=DIR, then `--` and the command's own options (e.g. -- --quick)",
)


def _key(item: str) -> str:
    return item.split("=", 1)[0].strip().lstrip("-").rsplit(".", 1)[-1]


def _resolve(preset: str | None, config: Path | None, overrides: list[str]) -> tuple[str, str]:
    """(engine, absolute run_dir) of the config the nodes will resolve."""
    from training.core.config import ConfigError, resolve_config

    try:
        cfg = resolve_config(preset, config, overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    section = getattr(cfg, "runtime", cfg)  # the run's settings, wherever the config keeps them
    engine, run_dir = str(section.engine), str(section.run_dir)
    if engine == "auto":
        from training.engines import resolve_engine_name

        engine = resolve_engine_name("auto")
    return engine, str(Path(run_dir).absolute())


def sbatch_cmd(
    stage: str = STAGE,
    overrides: list[str] = OVERRIDES,
    config: Path = typer.Option(None, "--config", "-c", help="YAML/JSON config file (on shared storage)"),
    preset: str = typer.Option(None, "--preset", "-p", help="bundled preset: tiny, small, gpt2-124m"),
    nodes: int = typer.Option(2, "--nodes", "-N", min=1, help="nodes of the allocation"),
    nproc_per_node: int = typer.Option(
        0, "--nproc-per-node", min=0, help="PyTorch processes per node (default: --gpus-per-node, else 1)"
    ),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", min=0, help="GPUs per node (--gpus-per-node)"),
    cpus_per_task: int = typer.Option(0, "--cpus-per-task", min=0, help="CPUs per node's task (0: Slurm's)"),
    partition: str = typer.Option(None, "--partition", help="partition (default: the cluster's default)"),
    time_limit: str = typer.Option(None, "--time", help="time limit, e.g. 04:00:00"),
    job_name: str = typer.Option(None, "--job-name", help="job name (default: envkit-<stage>)"),
    port: int = typer.Option(29500, "--port", help="rendezvous port on the first node (TF: every node)"),
    python: str = typer.Option(sys.executable, "--python", help="the nodes' Python with envkit installed"),
    log: str = typer.Option(None, "--log", help="Slurm output file (default: <run_dir>/slurm-%j.out)"),
    output: Path = typer.Option(None, "--output", "-o", help="write the script to this file"),
    submit: bool = typer.Option(False, "--submit", help="submit with sbatch and print the job id"),
) -> None:
    """Write the Slurm batch script that runs a stage (or the cycle) across --nodes nodes."""
    from envkit.atomic import atomic_write_text
    from training.cluster.sbatch import TOOL_JOBS, SbatchError, SbatchSpec, render
    from training.cluster.sbatch import submit as sbatch_submit

    overrides = list(overrides or [])
    if "=" in stage:  # `envkit train sbatch engine=tensorflow`: the stage was left at its default
        overrides.insert(0, stage)
        stage = "cycle"
    if stage in TOOL_JOBS:
        # envkit's own command on the nodes: no training config; run_dir= names where the JSON goes
        dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")]
        run_dir = str(Path(dirs[-1] if dirs else f"envkit-{stage}").absolute())
        engine, args = "pytorch", [o for o in overrides if not o.startswith("run_dir=")]
    else:
        engine, run_dir = _resolve(preset, config, overrides)
        args = [o for o in overrides if _key(o) not in ("run_dir", "engine")] + [f"engine={engine}"]
        if preset:
            args += ["--preset", preset]
        if config:
            args += ["--config", str(config.absolute())]
    spec = SbatchSpec(
        stage=stage,
        engine=engine,
        run_dir=run_dir,
        args=args,
        nodes=nodes,
        nproc_per_node=nproc_per_node or max(gpus_per_node, 1),
        gpus_per_node=gpus_per_node,
        cpus_per_task=cpus_per_task or None,
        partition=partition,
        time_limit=time_limit,
        job_name=job_name,
        port=port,
        python=python,
        log=log,
    )
    try:
        script = render(spec)
    except SbatchError as exc:
        raise UsageError(str(exc)) from None
    if output is not None or submit:
        # Slurm opens the job's log in the run directory before the script runs.
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create run_dir {run_dir} ({exc.strerror}); mount the shared storage here"
            ) from None
    if output is not None:
        atomic_write_text(output, script, mode=0o755)
    if submit:
        try:
            job_id = sbatch_submit(script)
        except SbatchError as exc:
            raise UsageError(str(exc)) from None
        except RuntimeError as exc:
            from envkit.cli_support import CheckFailed

            raise CheckFailed(str(exc)) from None
        typer.echo(job_id)
    elif output is None:
        typer.echo(script, nl=False)


app.command("sbatch")(sbatch_cmd)


@app.callback()
def _root() -> None:
    """Training across Slurm nodes (also `envkit train sbatch`)."""
