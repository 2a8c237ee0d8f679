"""The Slurm batch script of `envkit train sbatch`: any stage (or the cycle) across N nodes.

Also envkit's node checks as jobs: `accept` (envkit accept on every node) and
`allreduce` (envkit bench allreduce across the nodes).

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

TRAINING_STAGES = ("cycle", "prepare", "pretrain", "finetune", "test")
# envkit's own node checks as jobs: `envkit accept` on every node of the allocation
# (each node its own verdict), `envkit bench allreduce` across all of them (busbw between hosts).
TOOL_JOBS = ("accept", "allreduce")
STAGES = TRAINING_STAGES + TOOL_JOBS
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
        if self.stage in TOOL_JOBS:
            if not Path(self.run_dir).is_absolute():
                raise SbatchError(f"run_dir {self.run_dir!r} is relative; give an absolute path")
            if self.nodes < 1 or self.nproc_per_node < 1:
                raise SbatchError("--nodes and --nproc-per-node must be >= 1")
            return
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


def _tool_command(spec: SbatchSpec) -> str:
    """A node's part in an accept or allreduce job: its JSON lands in run_dir, named by the node."""
    out = f'{shlex.quote(spec.run_dir)}/{spec.stage}-"$SLURMD_NODENAME".json'
    args = shlex.join(spec.args)
    if spec.stage == "accept":
        return f'set -euo pipefail\nexec "$ENVKIT_PYTHON" -m envkit accept --out {out} {args}\n'
    env = 'eval "$("$ENVKIT_PYTHON" -m training.cluster.slurmenv --port "$ENVKIT_PORT")"'
    launch = (
        'host_flag=""; [ "$ENVKIT_IS_HOST" = 1 ] && host_flag=--is-host\n'
        'exec "$ENVKIT_PYTHON" -m envkit bench allreduce --nnodes "$ENVKIT_NNODES" '
        f"--nproc={spec.nproc_per_node} "
        '--rdzv-endpoint "$ENVKIT_HEAD:$ENVKIT_PORT" --rdzv-id "envkit-$SLURM_JOB_ID" $host_flag '
        f'--local-addr "$ENVKIT_NODE_ADDR" --out {out} {args}'
    )
    return f"set -euo pipefail\n{env}\n{launch}\n"


def _node_command(spec: SbatchSpec) -> str:
    """What each node runs (inside `srun bash -c`): its variables, then its launcher."""
    if spec.stage in TOOL_JOBS:
        return _tool_command(spec)
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
    if spec.stage == "accept":
        directives.append("--exclusive")  # a node's verdict is only worth something with the node to itself
    if spec.requeue and spec.stage not in TOOL_JOBS:
        directives.append("--requeue")  # a preempted job comes back and resumes
    directives.extend(spec.extra_sbatch)
    if spec.stage == "accept":
        about = [
            f"# envkit train sbatch: `envkit accept` on each of {spec.nodes} node(s), one verdict per node",
            f"# ({spec.run_dir}/accept-<node>.json); the job fails if any node is not accepted.",
        ]
    elif spec.stage == "allreduce":
        about = [
            f"# envkit train sbatch: `envkit bench allreduce` across {spec.nodes} node(s)"
            f" ({spec.nproc_per_node} process(es) each),",
            "# c10d rendezvous on the first node; busbw between the hosts in",
            f"# {spec.run_dir}/allreduce-<node>.json.",
        ]
    else:
        launcher = (
            f"torchrun per node ({spec.nproc_per_node} process(es) each), c10d rendezvous on the first node"
            if spec.engine == "pytorch"
            else "one MultiWorkerMirroredStrategy worker per node, TF_CONFIG from SLURM_*"
        )
        about = [
            f"# envkit train sbatch: `{spec.stage}` on {spec.nodes} node(s), engine {spec.engine}:",
            f"# {launcher}.",
            f"# Run directory (every node must see it): {spec.run_dir}",
            "# After scancel, a time limit or a preemption, submit this file again: the run resumes",
            "# from its last checkpoint.",
        ]
    # accept: every node finishes its own checks even when another fails
    kill_on_bad_exit = 0 if spec.stage == "accept" else 1
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {d}" for d in directives),
        *about,
        "set -euo pipefail",
        f"export ENVKIT_PYTHON={shlex.quote(spec.python)}",
        f"export ENVKIT_PORT={spec.port}",
        "export PYTHONUNBUFFERED=1",
        f"mkdir -p {shlex.quote(spec.run_dir)}",
        'echo "envkit: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"',
        # srun in the background so a SIGTERM to this shell reaches the tasks (they checkpoint)
        # instead of killing the shell first.
        f"srun --ntasks-per-node=1 --kill-on-bad-exit={kill_on_bad_exit} bash -c "
        + shlex.quote(_node_command(spec))
        + " &",
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
