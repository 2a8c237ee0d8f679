"""A real Slurm cluster on three containers, provisioned by playbooks/cluster.yml, and training on it."""

from __future__ import annotations

import json
import re

import pytest

from tests.cluster.conftest import (
    COMPUTE,
    COMPUTE_HOSTLIST,
    CONTROLLER,
    NODES,
    VENV,
    Cluster,
    docker,
    run_playbook,
    sh,
    wait_for,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.container,
    pytest.mark.ansible,
    pytest.mark.slow,
    # the first test also builds the node image and converges the cluster (session fixture)
    pytest.mark.timeout(3600),
]


def node_states() -> dict[str, str]:
    out = sh(CONTROLLER, "sinfo --noheader --Node --format='%N %t'", check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_converges_then_changes_nothing(cluster: Cluster) -> None:
    for node in NODES:
        assert cluster.first.recap(node)["failed"] == 0
        assert cluster.second.recap(node)["changed"] == 0, cluster.second.changed_tasks()
        assert cluster.second.recap(node)["failed"] == 0
    assert cluster.check.rc == 0, cluster.check.tail()
    for node in NODES:
        assert cluster.check.recap(node)["changed"] == 0, cluster.check.changed_tasks()
    print("cluster set-up (s):", json.dumps({k: round(v) for k, v in cluster.timings.items()}))


def test_sinfo_shows_both_compute_nodes_idle(cluster: Cluster) -> None:
    states = wait_for("both nodes idle", lambda: (s := node_states()) and set(s.values()) == {"idle"} and s)
    assert set(states) == set(COMPUTE)


def test_munge_credentials_decode_across_nodes(cluster: Cluster) -> None:
    for src in NODES:
        cred = sh(src, "munge --no-input").stdout
        for dst in NODES:
            if dst == src:
                continue
            decoded = docker("exec", "-i", dst, "unmunge", input=cred, check=False)
            assert decoded.returncode == 0, f"{src} -> {dst}: {decoded.stderr}"
            assert "STATUS:          Success (0)" in decoded.stdout
            assert f"ENCODE_HOST:     {src}" in decoded.stdout


# ---------------------------------------------------------------- training across the nodes
# A small model on the embedded synthetic data: long enough a pretraining to be
# cancelled in the middle, short enough for a 2-core machine.
CYCLE = [
    "synthetic_docs=300", "synthetic_reviews=300", "vocab_size=300", "block_size=32", "n_layer=1",
    "n_head=2", "n_embd=32", "batch_size=4", "grad_accum=2", "max_steps=40", "eval_every=20",
    "eval_batches=2", "checkpoint_every=5", "log_every=5", "warmup_steps=2", "max_len=32",
    "threads=1", "progress=plain", "dropout=0.1", "ft_epochs=1", "ft_batch_size=16",
]  # fmt: skip
PY = f"{VENV}/bin/python"
# Final weights of both stages: the pretrained LM and the fine-tuned classifier.
CHECKPOINTS = ("last", "finetune-last")
COMPARE = """
import json, sys
import numpy as np
from training.core.checkpoint import load_weights, read_manifest
out = {}
for name in sys.argv[3:]:
    a, b = (load_weights(f"{run}/checkpoints/{name}") for run in sys.argv[1:3])
    out[name] = {
        "names": sorted(a) == sorted(b),
        "bit_equal": sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a),
        "max_abs_diff": max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
        if sorted(a) == sorted(b) else None,
        "steps": [read_manifest(__import__("pathlib").Path(f"{run}/checkpoints/{name}"))["step"]
                  for run in sys.argv[1:3]],
    }
print(json.dumps(out))
"""


def compare(run_a: str, run_b: str) -> dict:
    proc = sh(COMPUTE[0], f"{PY} - {run_a} {run_b} {' '.join(CHECKPOINTS)} <<'EOF'\n{COMPARE}\nEOF")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_job(name: str, engine: str, run_dir: str, *extra: str) -> str:
    """`envkit train sbatch` on the controller (the login node): the script on shared storage."""
    path = f"/shared/jobs/{name}.sbatch"
    args = " ".join([*CYCLE, *extra, f"engine={engine}", f"run_dir={run_dir}"])
    sh(
        CONTROLLER,
        f"mkdir -p /shared/jobs && {PY} -m training.cluster sbatch cycle -N 2 {args} --output {path}",
    )
    return path


def submit(script: str, env: str = "") -> str:
    return sh(CONTROLLER, f"cd /shared/jobs && {env} sbatch --parsable {script}").stdout.strip().split(";")[0]


def job_state(job_id: str) -> str:
    out = sh(CONTROLLER, f"scontrol show job --oneliner {job_id}", check=False).stdout
    match = re.search(r"\bJobState=(\S+)", out)
    return match.group(1) if match else "UNKNOWN"


def wait_job(job_id: str, timeout: float = 900) -> str:
    running = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}
    return wait_for(f"job {job_id}", lambda: (s := job_state(job_id)) not in running and s, timeout, every=3)


def job_log(run_dir: str) -> str:
    return sh(COMPUTE[0], f"tail -n 60 {run_dir}/slurm-*.out", check=False).stdout


def torch_reference(run_dir: str) -> None:
    """The same cycle as 2 processes on one host (no Slurm): what -N2 must reproduce."""
    args = " ".join([*CYCLE, "engine=pytorch", f"run_dir={run_dir}"])
    proc = sh(
        COMPUTE[0],
        f"cd /shared && OMP_NUM_THREADS=1 {PY} -m torch.distributed.run --standalone --nproc-per-node=2 "
        f"-m training cycle {args}",
        check=False,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def torch_n2(cluster: Cluster) -> str:
    """The PyTorch cycle as `sbatch -N2` (one torchrun per node), run to the end."""
    run_dir = "/shared/runs/torch-n2"
    job = submit(write_job("torch-n2", "pytorch", run_dir))
    state = wait_job(job)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{job_log(run_dir)}"
    return run_dir


def test_pytorch_cycle_on_two_nodes_equals_two_processes_on_one_host(torch_n2: str) -> None:
    log = sh(CONTROLLER, f"cat {torch_n2}/slurm-*.out").stdout
    assert "envkit: job" in log and COMPUTE_HOSTLIST in log
    torch_reference("/shared/runs/torch-ref")
    result = compare(torch_n2, "/shared/runs/torch-ref")
    for name in CHECKPOINTS:
        assert result[name]["names"], result
        # Two ranks: each all-reduce adds two numbers, and a + b == b + a exactly, so the
        # cluster run (gloo over the network) and the local run (gloo over loopback) agree bit for bit.
        assert result[name]["bit_equal"], result
    assert result["last"]["steps"] == [40, 40]


def test_scancel_mid_pretrain_then_resubmit_resumes_to_the_same_weights(torch_n2: str) -> None:
    run_dir = "/shared/runs/torch-resume"
    script = write_job("torch-resume", "pytorch", run_dir)
    job = submit(script)

    def mid_pretrain() -> bool:
        probe = sh(
            COMPUTE[0],
            f"{PY} -c \"import json,sys; d=json.load(open('{run_dir}/checkpoints/last/manifest.json')); "
            "print(d['step'])\"",
            check=False,
        )
        return probe.returncode == 0 and 10 <= int(probe.stdout.strip() or 0) < 30

    wait_for("pretraining to pass step 10", mid_pretrain, timeout=600, every=1)
    sh(CONTROLLER, f"scancel {job}")
    state = wait_job(job, timeout=180)
    assert state == "CANCELLED", state
    stopped = json.loads(sh(COMPUTE[0], f"cat {run_dir}/checkpoints/last/manifest.json").stdout)
    assert 10 <= stopped["step"] < 40, stopped["step"]

    again = submit(script)
    state = wait_job(again)
    assert state == "COMPLETED", f"job {again} ended {state}:\n{job_log(run_dir)}"
    assert "resumed from" in sh(COMPUTE[0], f"cat {run_dir}/slurm-{again}.out").stdout
    result = compare(run_dir, torch_n2)
    for name in CHECKPOINTS:
        assert result[name]["bit_equal"], result


def test_tensorflow_cycle_one_worker_per_node_equals_two_workers_on_one_host(cluster: Cluster) -> None:
    run_dir = "/shared/runs/tf-n2"
    job = submit(write_job("tf-n2", "tensorflow", run_dir), env="ENVKIT_TF_XLA=0 TF_CPP_MIN_LOG_LEVEL=2")
    state = wait_job(job)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{job_log(run_dir)}"
    # The reference: two workers on one host, joined by TF_CONFIG on localhost.
    ref = "/shared/runs/tf-ref"
    args = " ".join([*CYCLE, "engine=tensorflow", f"run_dir={ref}"])
    workers = json.dumps(["localhost:29611", "localhost:29612"])
    script = " & ".join(
        f'TF_CONFIG=\'{{"cluster": {{"worker": {workers}}}, "task": {{"type": "worker", "index": {i}}}}}\' '
        f"ENVKIT_TF_XLA=0 TF_CPP_MIN_LOG_LEVEL=2 {PY} -m training cycle {args} > /tmp/tf-ref-{i}.log 2>&1"
        for i in range(2)
    )
    proc = sh(COMPUTE[0], f"cd /shared && ({script} & wait -n && wait -n); tail -n 30 /tmp/tf-ref-*.log",
              check=False, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    result = compare(run_dir, ref)
    for name in CHECKPOINTS:
        assert result[name]["names"], result
        assert result[name]["bit_equal"], result


# ---------------------------------------------------------------- envkit's node checks as jobs
def write_tool_job(stage: str, run_dir: str, *args: str) -> str:
    path = f"/shared/jobs/{stage}.sbatch"
    sh(
        CONTROLLER,
        f"mkdir -p /shared/jobs && {PY} -m training.cluster sbatch {stage} -N 2 run_dir={run_dir} "
        f"--output {path} -- {' '.join(args)}",
    )
    return path


def test_allreduce_across_the_nodes_reports_busbw_between_hosts(cluster: Cluster) -> None:
    run_dir = "/shared/runs/allreduce"
    job = submit(write_tool_job("allreduce", run_dir, "--max-size", "4MiB", "--min-time", "0.1"))
    state = wait_job(job, timeout=600)
    assert state == "COMPLETED", f"job {job} ended {state}:\n{job_log(run_dir)}"
    docs = {n: json.loads(sh(CONTROLLER, f"cat {run_dir}/allreduce-{n}.json").stdout) for n in COMPUTE}
    for node, doc in docs.items():
        summary = doc["summary"]
        assert (summary["status"], summary["world_size"], summary["nnodes"]) == ("ok", 2, 2), (node, summary)
        assert summary["busbw_factor"] == 1.0  # 2(n-1)/n with one rank on each of the two hosts
        assert doc["results"] and all(r["correct"] and r["world_size"] == 2 for r in doc["results"])
        assert summary["peak_busbw_gbps"] > 0
    # the timings are reduced over both ranks: both hosts report the same figures
    first, second = (docs[n]["results"] for n in COMPUTE)
    assert [r["seconds"] for r in first] == [r["seconds"] for r in second]
    print("allreduce between hosts:", json.dumps([(r["bytes"], round(r["busbw_gbps"], 3)) for r in first]))


def test_accept_runs_as_a_job_on_every_node(cluster: Cluster) -> None:
    run_dir = "/shared/runs/accept"
    job = submit(write_tool_job("accept", run_dir, "--device", "cpu", "--duration", "5s"))
    state = wait_job(job, timeout=900)
    verdicts = {}
    for node in COMPUTE:
        proc = sh(CONTROLLER, f"cat {run_dir}/accept-{node}.json", check=False)
        assert proc.returncode == 0, f"no verdict from {node}:\n{job_log(run_dir)}"
        doc = json.loads(proc.stdout)
        verdicts[node] = doc["verdict"]["result"]
        assert doc["node"]["hostname"] == node, doc["node"]
    assert verdicts == dict.fromkeys(COMPUTE, "pass"), (verdicts, job_log(run_dir))
    assert state == "COMPLETED", state


# ---------------------------------------------------------------- health check
def node_table() -> dict[str, tuple[str, str]]:
    """node -> (state, reason) as sinfo reports them."""
    out = sh(CONTROLLER, "sinfo --noheader --Node --format='%N|%t|%E'", check=False).stdout
    rows = (line.split("|", 2) for line in out.splitlines() if line.count("|") == 2)
    return {node: (state, reason) for node, state, reason in rows}


def test_failing_doctor_drains_the_node_with_its_reason_and_jobs_run_on_the_other(cluster: Cluster) -> None:
    # A shorter interval: applied by `scontrol reconfigure`, no daemon restarted.
    run = run_playbook(cluster.inventory, "--tags", "slurm", "-e", "slurm_healthcheck_interval=10")
    assert run.rc == 0, run.tail()
    assert "RUNNING HANDLER [slurm : Slurm reconfigure]" in run.output
    assert "RUNNING HANDLER [slurm : Slurm restart" not in run.output
    broken, healthy = COMPUTE[1], COMPUTE[0]
    init = f"{VENV}/lib/python3.11/site-packages/torch/__init__.py"
    sh(
        broken,
        f"cp {init} /root/torch-init.py && sed -i '1i raise ImportError(\"broken on purpose\")' {init}",
    )
    try:
        table = wait_for(
            "the health check to drain the broken node",
            lambda: (t := node_table()) and t.get(broken, ("", ""))[0].startswith("drain") and t,
            timeout=240,
            every=3,
        )
        reason = table[broken][1]
        assert reason.startswith("envkit doctor: "), reason
        assert "pytorch" in reason and "broken on purpose" in reason, reason
        assert table[healthy][0] == "idle"
        jobs = [
            sh(CONTROLLER, "cd /shared/jobs && sbatch --parsable -N1 --output=wrap-%j.out --wrap hostname")
            .stdout.strip()
            .split(";")[0]
            for _ in range(2)
        ]
        for job in jobs:
            assert wait_job(job, timeout=120) == "COMPLETED"
            out = sh(CONTROLLER, f"scontrol show job --oneliner {job}").stdout
            assert re.search(rf"\bNodeList={healthy}\b", out), out
            assert sh(CONTROLLER, f"cat /shared/jobs/wrap-{job}.out").stdout.strip() == healthy
    finally:
        sh(broken, f"cp /root/torch-init.py {init}")
    # doctor passes again: the drain the health check set is lifted
    wait_for("the repaired node to return", lambda: node_table().get(broken, ("",))[0] == "idle", timeout=240)
