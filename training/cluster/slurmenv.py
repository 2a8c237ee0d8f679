"""One node's part in a multi-node job, from Slurm's variables (run by the batch script on each node).

    eval "$(python -m training.cluster.slurmenv --port 29500)"

prints `export` lines: ENVKIT_HEAD (the allocation's first node, where the
c10d store runs), ENVKIT_IS_HOST (1 there, 0 elsewhere: torchrun's
`--rdzv-conf is_host=`, because c10d's own guess compares host names and fails
when node names do not resolve the way it expects), ENVKIT_NODE_ADDR,
ENVKIT_NODE_RANK, ENVKIT_NNODES, and TF_CONFIG (one TensorFlow worker per
node, index = the node's rank).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping, Sequence

from training.cluster.hostlist import HostlistError, expand_hostlist


class SlurmEnvError(ValueError):
    """The process is not a task of a Slurm job step (or the variables disagree)."""


def _need(env: Mapping[str, str], *names: str) -> str:
    for name in names:
        if env.get(name, "").strip():
            return env[name].strip()
    raise SlurmEnvError(
        f"{' or '.join(names)} is not set; run this inside a Slurm job step (srun in an sbatch script)"
    )


def node_env(env: Mapping[str, str], port: int) -> dict[str, str]:
    """The variables this node's launcher needs, derived from `env` (os.environ of an srun task)."""
    try:
        nodes = expand_hostlist(_need(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST"))
    except HostlistError as exc:
        raise SlurmEnvError(str(exc)) from None
    node_rank = int(_need(env, "SLURM_NODEID"))
    nnodes = int(_need(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES"))
    if nnodes != len(nodes) or not 0 <= node_rank < nnodes:
        raise SlurmEnvError(
            f"SLURM_NODEID={node_rank} and {nnodes} node(s) do not fit the node list {nodes}; "
            "start one task per node (srun --ntasks-per-node=1)"
        )
    this = env.get("SLURMD_NODENAME") or nodes[node_rank]
    tf_config = {
        "cluster": {"worker": [f"{host}:{port}" for host in nodes]},
        "task": {"type": "worker", "index": node_rank},
    }
    return {
        "ENVKIT_HEAD": nodes[0],
        "ENVKIT_IS_HOST": "1" if node_rank == 0 else "0",
        "ENVKIT_NODE_ADDR": this,
        "ENVKIT_NODE_RANK": str(node_rank),
        "ENVKIT_NNODES": str(nnodes),
        "TF_CONFIG": json.dumps(tf_config, separators=(",", ":")),
    }


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Print this node's variables as shell `export` lines; exit 2 outside a job step."""
    import os

    parser = argparse.ArgumentParser(prog="python -m training.cluster.slurmenv")
    parser.add_argument("--port", type=int, default=29500, help="rendezvous / TF worker port")
    args = parser.parse_args(argv)
    try:
        values = node_env(os.environ if env is None else env, args.port)
    except SlurmEnvError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    for key, value in values.items():
        sys.stdout.write(f"export {key}={shlex.quote(value)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
