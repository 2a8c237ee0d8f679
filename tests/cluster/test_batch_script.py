"""The batch script and each node's Slurm-derived environment, without a cluster (fast)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from training.cluster.cli import app
from training.cluster.hostlist import HostlistError, expand_hostlist
from training.cluster.sbatch import SbatchError, SbatchSpec, render
from training.cluster.slurmenv import SlurmEnvError, main, node_env


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("envkit-cluster-c[1-2]", ["envkit-cluster-c1", "envkit-cluster-c2"]),
        ("n[08-10,12],gpu-a", ["n08", "n09", "n10", "n12", "gpu-a"]),
        ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
        ("solo", ["solo"]),
    ],
)
def test_hostlists_expand_like_scontrol(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["", "n[1-", "n[3-1]", "n[a-b]", "n]"])
def test_malformed_hostlists_are_refused(text: str) -> None:
    with pytest.raises(HostlistError):
        expand_hostlist(text)


SLURM = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURMD_NODENAME": "gpu08"}


def test_the_first_node_hosts_the_rendezvous_and_is_tf_worker_0() -> None:
    head = node_env({**SLURM, "SLURM_NODEID": "0", "SLURMD_NODENAME": "gpu07"}, 29501)
    other = node_env({**SLURM, "SLURM_NODEID": "1"}, 29501)
    assert (head["ENVKIT_HEAD"], head["ENVKIT_IS_HOST"]) == ("gpu07", "1")
    assert (other["ENVKIT_HEAD"], other["ENVKIT_IS_HOST"], other["ENVKIT_NODE_ADDR"]) == (
        "gpu07",
        "0",
        "gpu08",
    )
    tf = json.loads(other["TF_CONFIG"])
    assert tf == {
        "cluster": {"worker": ["gpu07:29501", "gpu08:29501"]},
        "task": {"type": "worker", "index": 1},
    }


def test_outside_a_job_step_the_node_env_says_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SlurmEnvError, match="SLURM_NODEID"):
        node_env({"SLURM_JOB_NODELIST": "a,b", "SLURM_JOB_NUM_NODES": "2"}, 1)
    with pytest.raises(SlurmEnvError, match="one task per node"):
        node_env({**SLURM, "SLURM_NODEID": "2"}, 1)
    assert main(["--port", "1"], env={}) == 2
    assert capsys.readouterr().err.startswith("error: SLURM_JOB_NODELIST")


def test_exports_evaluate_in_a_shell() -> None:
    env = {**SLURM, "SLURM_NODEID": "1"}
    code = "from training.cluster.slurmenv import main; import sys; sys.exit(main(['--port', '7']))"
    exports = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        check=True, cwd=sys.path[0] or None,
    ).stdout  # fmt: skip
    out = subprocess.run(
        ["bash", "-c", exports + 'echo "$ENVKIT_IS_HOST $TF_CONFIG"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(" ", 1)
    assert out[0] == "0" and json.loads(out[1])["task"]["index"] == 1


def _spec(**kw) -> SbatchSpec:
    base = {"stage": "cycle", "engine": "pytorch", "run_dir": "/shared/runs/a", "args": ["max_steps=5"]}
    return SbatchSpec(**{**base, **kw})


def test_pytorch_script_runs_torchrun_per_node_with_explicit_is_host() -> None:
    script = render(_spec(nodes=4, nproc_per_node=8, gpus_per_node=8, time_limit="01:00:00"))
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--signal=TERM@60",
                      "--time=01:00:00", "--requeue", "--output=/shared/runs/a/slurm-%j.out"):  # fmt: skip
        assert f"#SBATCH {directive}\n" in script
    node = shlex.split(script.split("bash -c ", 1)[1].rsplit(" &", 1)[0])[0]
    assert "--rdzv-backend=c10d" in node and '--rdzv-conf=is_host="$ENVKIT_IS_HOST"' in node
    assert '--rdzv-endpoint="$ENVKIT_HEAD:$ENVKIT_PORT"' in node and "--nproc-per-node=8" in node
    assert node.rstrip().endswith("-m training cycle max_steps=5 run_dir=/shared/runs/a")


def test_tensorflow_script_exports_tf_config_and_runs_one_worker() -> None:
    script = render(_spec(engine="tensorflow"))
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    node = shlex.split(script.split("bash -c ", 1)[1].rsplit(" &", 1)[0])[0]
    assert "export TF_CONFIG" in node and "torch.distributed.run" not in node
    with pytest.raises(SbatchError, match="one worker per node"):
        render(_spec(engine="tensorflow", nproc_per_node=2))


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"run_dir": "runs/a"}, "absolute"), ({"stage": "train"}, "stage"), ({"engine": "jax"}, "engine")],
)
def test_bad_specs_are_refused_with_the_fix(kw: dict, message: str) -> None:
    with pytest.raises(SbatchError, match=message):
        render(_spec(**kw))


def test_cli_prints_the_script_with_an_absolute_run_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sbatch", "pretrain", "run_dir=rel", "engine=pytorch", "max_steps=3"])
    assert result.exit_code == 0, result.output
    assert f"run_dir={tmp_path}/rel" in result.output and "run_dir=rel " not in result.output
    out = tmp_path / "job.sbatch"
    result = CliRunner().invoke(app, ["sbatch", "-N", "3", "engine=tensorflow", "--output", str(out)])
    assert result.exit_code == 0 and out.read_text().count("#SBATCH --nodes=3") == 1


def test_cli_bad_input_is_one_error_line_and_exit_2() -> None:
    result = CliRunner().invoke(app, ["sbatch", "cycle", "engine=bogus"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["sbatch", "train", "engine=pytorch", "run_dir=/x"])
    assert result.exit_code == 2 and "stage 'train'" in result.output


def _node_part(script: str) -> str:
    return shlex.split(script.split("bash -c ", 1)[1].rsplit(" &", 1)[0])[0]


def test_allreduce_job_joins_every_node_by_c10d_with_the_head_as_store_host(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["sbatch", "allreduce", "-N", "3", f"run_dir={tmp_path}/ar", "--", "--max-size", "4MiB"]
    )
    assert result.exit_code == 0, result.output
    script = result.output
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    assert "#SBATCH --nodes=3\n" in script and "--requeue" not in script
    node = _node_part(script)
    assert "-m training.cluster.slurmenv" in node and "-m envkit bench allreduce" in node
    assert '--nnodes "$ENVKIT_NNODES"' in node and '--rdzv-endpoint "$ENVKIT_HEAD:$ENVKIT_PORT"' in node
    assert '[ "$ENVKIT_IS_HOST" = 1 ] && host_flag=--is-host' in node
    assert node.rstrip().endswith(f'--out {tmp_path}/ar/allreduce-"$SLURMD_NODENAME".json --max-size 4MiB')


def test_allreduce_job_node_command_gets_is_host_only_on_the_first_node(tmp_path) -> None:
    """The node part, run by bash with a stand-in python that echoes its argv: the flags it builds."""
    script = render(SbatchSpec(stage="allreduce", engine="pytorch", run_dir=str(tmp_path), nodes=2))
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/bash\n"
        'if [ "$2" = training.cluster.slurmenv ]; then exec ' + sys.executable + ' "$@"; fi\n'
        'echo "$@"\n'
    )
    fake.chmod(0o755)
    flags = {}
    for rank, name in enumerate(("gpu07", "gpu08")):
        env = {**SLURM, "SLURM_NODEID": str(rank), "SLURMD_NODENAME": name, "SLURM_JOB_ID": "42",
               "ENVKIT_PYTHON": str(fake), "ENVKIT_PORT": "29400", "PATH": "/usr/bin:/bin",
               "PYTHONPATH": sys.path[0] or "."}  # fmt: skip
        out = subprocess.run(
            ["bash", "-c", _node_part(script)], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        flags[name] = out
    head, other = flags["gpu07"], flags["gpu08"]
    assert "--is-host" in head and "--is-host" not in other
    for argv, addr in ((head, "gpu07"), (other, "gpu08")):
        assert argv[argv.index("--rdzv-endpoint") + 1] == "gpu07:29400"
        assert argv[argv.index("--local-addr") + 1] == addr
        assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--rdzv-id") + 1] == "envkit-42"


def test_accept_job_runs_accept_on_every_node_exclusively_and_lets_each_finish(tmp_path) -> None:
    script = render(
        SbatchSpec(stage="accept", engine="pytorch", run_dir=str(tmp_path), nodes=4, args=["--quick"])
    )
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    assert "#SBATCH --exclusive\n" in script and "--kill-on-bad-exit=0" in script
    node = _node_part(script)
    assert node.rstrip().endswith(f'-m envkit accept --out {tmp_path}/accept-"$SLURMD_NODENAME".json --quick')


def test_bench_allreduce_across_hosts_launches_torchrun_with_c10d_not_standalone() -> None:
    from envkit.bench.allreduce import AllreduceOptions, _launch_args, resolve
    from envkit.bench.errors import BenchInputError

    one = _launch_args(AllreduceOptions(), 2)
    assert one == ["--standalone", "--nproc-per-node=2"]
    many = _launch_args(
        AllreduceOptions(nnodes=2, rdzv_endpoint="n1:29400", is_host=True, local_addr="n1"), 1
    )
    assert "--standalone" not in many and "--rdzv-conf=is_host=1" in many
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=n1:29400", "--local-addr=n1"} <= set(many)
    pytest.importorskip("torch")
    with pytest.raises(BenchInputError, match="--rdzv-endpoint"):
        resolve(AllreduceOptions(nnodes=2))
