"""The Slurm batch script of `envkit train sbatch`: any stage (or the cycle) across N nodes.

One `srun` task per node. PyTorch: each task starts `torchrun` for its node's
processes, joined by c10d rendezvous on the allocation's first node with
`--rdzv-conf is_host=` set explicitly. TensorFlow: each task is one worker of
MultiWorkerMirroredStrategy, `TF_CONFIG` built from `SLURM_*`. The run
directory must be on storage every node sees; rank 0 writes the checkpoints,
and resubmitting the same script after `scancel`, a time limit
(`--signal=TERM@60` gives the job a minute to checkpoint) or a preemption
(`--requeue`) continues from the last one (`resume=auto`).
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("cycle", "prepare", "pretrain", "finetune", "test")
ENGINES = ("pytorch", "tensorflow")


class SbatchError(ValueError):
    """The job cannot be written as asked (message names the input and the fix)."""


@dataclass
class SbatchSpec:
    """Everything the batch script needs; `args` are `envkit train <stage>`'s own arguments."""

    stage: str
    engine: str
    run_dir: str
    args: list[str] = field(default_factory=list)
    nodes: int = 2
    nproc_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    partition: str | None = None
    time_limit: str | None = None
    job_name: str | None = None
    port: int = 29500
    signal_lead_s: int = 60
    requeue: bool = True
    python: str = "python3"
    log: str | None = None  # default: <run_dir>/slurm-%j.out
    extra_sbatch: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise SbatchError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if self.engine not in ENGINES:
            raise SbatchError(
                f"engine {self.engine!r} cannot run across nodes; use engine=pytorch or tensorflow"
            )
        if not Path(self.run_dir).is_absolute():
            raise SbatchError(
                f"run_dir {self.run_dir!r} is relative; give an absolute path on storage every node mounts"
            )
        if self.nodes < 1 or self.nproc_per_node < 1 or self.gpus_per_node < 0:
            raise SbatchError("--nodes and --nproc-per-node must be >= 1, --gpus-per-node >= 0")
        if self.engine == "tensorflow" and self.nproc_per_node != 1:
            raise SbatchError(
                "TensorFlow runs one worker per node (it uses every local GPU itself); drop --nproc-per-node"
            )
        if not 1 <= self.port <= 65535:
            raise SbatchError(f"--port {self.port} is not a TCP port")


def _node_command(spec: SbatchSpec) -> str:
    """What each node runs (inside `srun bash -c`): its variables, then its launcher."""
    train = shlex.join(["-m", "training", spec.stage, *spec.args, f"run_dir={spec.run_dir}"])
    env = 'eval "$("$ENVKIT_PYTHON" -m training.cluster.slurmenv --port "$ENVKIT_PORT")"'
    if spec.engine == "tensorflow":
        launch = f'export TF_CONFIG\nexec "$ENVKIT_PYTHON" {train}'
    else:
        launch = (
            'exec "$ENVKIT_PYTHON" -m torch.distributed.run --nnodes="$ENVKIT_NNODES" '
            f"--nproc-per-node={spec.nproc_per_node} --rdzv-backend=c10d "
            '--rdzv-endpoint="$ENVKIT_HEAD:$ENVKIT_PORT" --rdzv-id="envkit-$SLURM_JOB_ID" '
            '--rdzv-conf=is_host="$ENVKIT_IS_HOST" --local-addr="$ENVKIT_NODE_ADDR" --max-restarts=0 '
            f"{train}"
        )
    return f"set -euo pipefail\n{env}\n{launch}\n"


def render(spec: SbatchSpec) -> str:
    """The batch script text (validated first)."""
    spec.validate()
    name = spec.job_name or f"envkit-{spec.stage}"
    log = spec.log or f"{spec.run_dir}/slurm-%j.out"
    directives = [
        f"--job-name={name}",
        f"--nodes={spec.nodes}",
        "--ntasks-per-node=1",
        f"--output={log}",
        "--open-mode=append",
        # a minute's warning before the time limit: the loop saves a checkpoint on SIGTERM
        f"--signal=TERM@{spec.signal_lead_s}",
    ]
    if spec.gpus_per_node:
        directives.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.cpus_per_task:
        directives.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.partition:
        directives.append(f"--partition={spec.partition}")
    if spec.time_limit:
        directives.append(f"--time={spec.time_limit}")
    if spec.requeue:
        directives.append("--requeue")  # a preempted job comes back and resumes
    directives.extend(spec.extra_sbatch)
    launcher = (
        f"torchrun per node ({spec.nproc_per_node} process(es) each), c10d rendezvous on the first node"
        if spec.engine == "pytorch"
        else "one MultiWorkerMirroredStrategy worker per node, TF_CONFIG from SLURM_*"
    )
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {d}" for d in directives),
        f"# envkit train sbatch: `{spec.stage}` on {spec.nodes} node(s), engine {spec.engine}: {launcher}.",
        f"# Run directory (every node must see it): {spec.run_dir}",
        "# After scancel, a time limit or a preemption, submit this file again: the run resumes",
        "# from its last checkpoint.",
        "set -euo pipefail",
        f"export ENVKIT_PYTHON={shlex.quote(spec.python)}",
        f"export ENVKIT_PORT={spec.port}",
        "export PYTHONUNBUFFERED=1",
        f"mkdir -p {shlex.quote(spec.run_dir)}",
        'echo "envkit: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"',
        # srun in the background so a SIGTERM to this shell reaches the tasks (they checkpoint)
        # instead of killing the shell first.
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c " + shlex.quote(_node_command(spec)) + " &",
        "srun_pid=$!",
        "trap 'kill -TERM \"$srun_pid\" 2>/dev/null || true' TERM",
        'wait "$srun_pid" || status=$?',
        # wait returns early when the trap ran: wait again for srun's own exit status
        'if kill -0 "$srun_pid" 2>/dev/null; then wait "$srun_pid" || status=$?; fi',
        'exit "${status:-0}"',
    ]
    return "\n".join(lines) + "\n"


def submit(script: str, timeout_s: float = 60.0) -> str:
    """`sbatch --parsable` the script (on stdin); returns the job id."""
    try:
        proc = subprocess.run(
            ["sbatch", "--parsable"],
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise SbatchError("sbatch is not on PATH; run on a Slurm login node, or print the script") from None
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";", 1)[0]
