"""The CUDA images, built here from the local Debian base with CUDA from PyPI, tested without a GPU.

Each CUDA row of the matrix (pytorch-cuda, pytorch-cuda-devel, tensorflow-cuda) is
built once per session (or given with --image) and checked from outside: the
framework's CUDA build against the matrix row, every CUDA library loading with
no GPU, no soname twice, what the NVIDIA Container Toolkit reads, doctor's
verdicts, the tiny cycle on the CPU, and the same hygiene as the cpu images.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from envkit.images import checks
from envkit.images.build import SOURCE_LABEL
from envkit.images.wheelhouse import read_lock
from envkit.matrix import load_matrix, major_minor, version_tuple
from tests.containers.conftest import BuiltImage
from tests.containers.test_images import assert_clean_layers
from tests.containers.tracked_container import TrackedContainer

pytestmark = [pytest.mark.container, pytest.mark.slow]

CUDALIBS = Path(checks.__file__).with_name("cudalibs.py").read_text(encoding="utf-8")


def cudalibs(container: TrackedContainer, command: str, **kwargs) -> dict:
    result = container.run_and_wait(["python", "-c", CUDALIBS, command], **kwargs)
    return json.loads(result.stdout)


def test_framework_reports_the_rows_cuda_build(cuda_container, cuda_image: BuiltImage):
    row = cuda_image.row
    probe = checks.TORCH_PROBE if row.framework == "pytorch" else checks.TF_PROBE
    seen = json.loads(cuda_container.run_and_wait(["python", "-c", probe]).stdout.splitlines()[-1])
    want_cuda, want_cudnn = checks.expected_cuda(row)
    assert major_minor(seen["cuda"]) == major_minor(want_cuda), seen
    # A100 (sm_80), H100/H200 (sm_90), B200 (sm_100, CUDA >= 12.8); PTX (compute_XX) counts
    required = checks.required_archs(want_cuda)
    assert "sm_80" in required and "sm_90" in required
    assert [a for a in required if not checks.covers(seen["archs"], a)] == [], seen["archs"]
    if row.framework == "pytorch":
        assert "sm_100" in required
        assert seen["available"] is False  # no GPU here; the CUDA build still imports and runs on CPU
        assert seen["cudnn"] >= 90000, seen  # cuDNN 9
        assert len(seen["nccl"]) == 3 and seen["nccl"][0] == 2, seen
    else:
        assert seen["is_cuda_build"] is True and seen["gpus"] == 0
        assert checks._same_prefix(str(seen["cudnn"]), want_cudnn), (seen["cudnn"], want_cudnn)


def test_installed_cuda_wheels_are_exactly_the_rows_lock(cuda_container, cuda_image: BuiltImage):
    lock = read_lock(Path(checks.__file__).parents[2] / "Dockerfiles" / "locks" / f"{cuda_image.row.key}.txt")
    assert lock is not None and lock.cuda_entries(), "the CUDA row has no lock with nvidia-*/cuda-* pins"
    listed = json.loads(cuda_container.run_and_wait(["pip", "list", "--format", "json"]).stdout)
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in listed}
    pinned = {e.name.lower().replace("_", "-"): e.version for e in lock.cuda_entries()}
    assert {k: installed.get(k) for k in pinned} == pinned


def test_every_cuda_library_loads_without_a_gpu(cuda_container, cuda_image: BuiltImage):
    result = cudalibs(cuda_container, "dlopen")
    assert result["failed"] == {}
    # only what links the driver itself (libcuda.so.1, mounted by --gpus) may wait for a GPU host
    assert all("libcuda.so.1" in why for why in result["needs_driver"].values()), result["needs_driver"]
    names = {Path(p).name.split(".so")[0] for p in result["loaded"]}
    # the libraries a training run needs; torch's CUDA 13 set also ships GDS, whose RDMA
    # plug-in loads thanks to libmlx5 (ibverbs-providers); TF's cu12 set has no cuFile
    wanted = {"libcudart", "libcublas", "libcudnn", "libnccl"}
    if cuda_image.row.framework == "pytorch":
        wanted.add("libcufile_rdma")
    assert wanted <= names, sorted(names)


def test_no_cuda_soname_is_shipped_twice(cuda_container):
    scan = cudalibs(cuda_container, "scan")
    assert scan["libraries"], "the scan found no CUDA library at all"
    assert scan["duplicates"] == {}


def test_duplicate_detector_and_dedupe_on_the_built_image(cuda_container):
    # No nvidia/cuda base can be pulled here: stand in for one by copying the wheels'
    # libcudart where NVIDIA's base has it, then run the build's own dedupe step.
    script = textwrap.dedent(
        """
        set -e
        lib=$(find /opt/venv -name 'libcudart.so.*' -type f | head -n 1)
        mkdir -p /usr/local/cuda-stand-in/lib64
        cp "$lib" /usr/local/cuda-stand-in/lib64/
        ln -s "$(basename "$lib")" /usr/local/cuda-stand-in/lib64/libcudart.so
        python -c "$CUDALIBS" scan > /tmp/before.json
        python -c "$CUDALIBS" dedupe --keep /opt/venv
        python -c "$CUDALIBS" scan > /tmp/after.json
        python -c 'import json; print(json.dumps([json.load(open(f))["duplicates"]
            for f in ("/tmp/before.json", "/tmp/after.json")]))'
        ls /usr/local/cuda-stand-in/lib64 | wc -l
        """
    )
    result = cuda_container.run_and_wait(["sh", "-c", script], user="0:0", environment={"CUDALIBS": CUDALIBS})
    lines = result.stdout.strip().splitlines()
    before, after = json.loads(lines[-2])
    dup = [name for name in before if name.startswith("libcudart.so")]
    assert dup, f"the detector missed the second libcudart: {before}"
    assert len(before[dup[0]]) == 2
    assert "removed /usr/local/cuda-stand-in/lib64/" in result.stdout
    assert after == {} and lines[-1] == "0"  # the copy and its link are gone, the venv's remains


def test_what_the_nvidia_container_toolkit_reads(docker_client, cuda_image: BuiltImage):
    attrs = docker_client.images.get(cuda_image.tag).attrs
    env = checks.image_env(attrs)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["NVIDIA_REQUIRE_CUDA"] == f"cuda>={cuda_image.row.cuda}"
    assert "/usr/local/nvidia/lib64" in env["LD_LIBRARY_PATH"].split(":")


def test_labels_equal_the_row_and_say_cuda_compat_is_absent(docker_client, cuda_image: BuiltImage):
    labels = docker_client.images.get(cuda_image.tag).labels
    assert {k: labels.get(k) for k in cuda_image.row.labels()} == cuda_image.row.labels()
    assert labels["io.envkit.cuda-compat"] == "absent"
    if cuda_image.plan is not None:
        assert labels.get(SOURCE_LABEL) == cuda_image.plan.labels.get(SOURCE_LABEL)


def test_doctor_says_cuda_build_without_a_gpu_and_fails_only_with_require_gpu(
    cuda_container, cuda_image: BuiltImage
):
    result = cuda_container.run(["envkit", "doctor", "--json"], timeout=600)
    report = json.loads(result.stdout)
    assert result.exit_code == report["verdict"]["exit_code"] == 0, report["verdict"]
    fw = report["facts"]["frameworks"][cuda_image.row.framework]
    assert fw["gpu_build"] is True
    assert major_minor(fw["cuda"]) == major_minor(checks.expected_cuda(cuda_image.row)[0])
    assert report["facts"]["gpu_count"] == 0
    text = cuda_container.run(["envkit", "doctor"], timeout=600)
    said = " ".join((text.stdout + text.stderr).split())
    assert "CUDA build" in said and "--gpus all" in said, said[-2000:]
    strict = cuda_container.run(["envkit", "doctor", "--require-gpu"], timeout=600)
    assert strict.exit_code == 1, strict.stdout[-2000:]


def test_non_root_tini_and_pip_check(cuda_container):
    script = "id -u; tr '\\0' ' ' < /proc/1/cmdline; echo; pip check"
    result = cuda_container.run_and_wait(["sh", "-c", script])
    uid, pid1, *rest = result.stdout.strip().splitlines()
    assert uid == "1000"
    assert Path(pid1.split()[0]).name == "tini"
    assert "No broken requirements" in " ".join(rest)


def test_size_within_the_rows_budget(docker_client, cuda_image: BuiltImage):
    size_mb = docker_client.images.get(cuda_image.tag).attrs["Size"] / 2**20
    assert size_mb <= cuda_image.row.size_budget_mb, f"{size_mb:.0f} MB > {cuda_image.row.size_budget_mb}"


def test_no_pip_cache_credentials_or_ca_secret_in_any_layer(docker_client, cuda_image, secret_marker):
    assert_clean_layers(docker_client, cuda_image, secret_marker)


EXTENSION = """
#include <torch/extension.h>

__global__ void add_one(const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] + 1.0f;
}

torch::Tensor add_one_cuda(torch::Tensor x) {
  auto y = torch::empty_like(x);
  int n = x.numel();
  add_one<<<(n + 255) / 256, 256>>>(x.data_ptr<float>(), y.data_ptr<float>(), n);
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("add_one", &add_one_cuda); }
"""

BUILD_EXTENSION = """
import os, sys, torch
from torch.utils import cpp_extension
print("CUDA_HOME", cpp_extension.CUDA_HOME)
mod = cpp_extension.load(name="envkit_add_one", sources=["/tmp/ext/add_one.cu"],
                         build_directory="/tmp/ext/build", verbose=False)
so = [f for f in os.listdir("/tmp/ext/build") if f.endswith(".so")]
print("BUILT", so)
print("HAS", hasattr(mod, "add_one"))
"""


def test_devel_image_compiles_a_cuda_extension_with_cpp_extension(docker_client, build_image):
    built = build_image("pytorch", "cuda-devel")
    tracked = TrackedContainer(docker_client, built.tag, {"shm_size": "1g"})
    try:
        cmd = 'mkdir -p /tmp/ext/build && printf "%s" "$SRC" > /tmp/ext/add_one.cu && python -c "$BUILD"'
        result = tracked.run_and_wait(
            ["sh", "-c", cmd],
            timeout=1200,
            # sm_90 only: one architecture keeps the compile short; no GPU is needed to compile
            environment={
                "SRC": EXTENSION,
                "BUILD": BUILD_EXTENSION,
                "TORCH_CUDA_ARCH_LIST": "9.0",
                "MAX_JOBS": "2",
            },
        )
    finally:
        tracked.remove()
    assert "CUDA_HOME /opt/venv/cuda" in result.stdout
    assert "BUILT ['envkit_add_one.so']" in result.stdout and "HAS True" in result.stdout, result.stdout


def _cycle(docker_client, tag: str, engine: str, workspace: Path) -> dict:
    workspace.mkdir()
    os.chown(workspace, 1000, 1000)
    tracked = TrackedContainer(docker_client, tag)
    try:
        tracked.run_and_wait(
            ["envkit", "train", "cycle", "--preset", "tiny", f"engine={engine}", "run_dir=/workspace/run"],
            timeout=1800,
            shm_size="1g",
            volumes={str(workspace): {"bind": "/workspace", "mode": "rw"}},
            healthcheck={"test": ["NONE"]},
        )
    finally:
        tracked.remove()
    return json.loads((workspace / "run" / "report.json").read_text(encoding="utf-8"))


def test_tiny_cycle_in_the_cuda_image_reaches_the_cpu_images_accuracy(
    docker_client, cuda_image: BuiltImage, build_cpu_image, tmp_path: Path
):
    if cuda_image.row.variant == "cuda-devel":
        pytest.skip("the devel image adds compilers to the cuda image, whose cycle runs here")
    engine = cuda_image.row.framework
    cpu = build_cpu_image(cuda_image.row.name)
    on_cuda = _cycle(docker_client, cuda_image.tag, engine, tmp_path / "cuda")
    on_cpu = _cycle(docker_client, cpu.tag, engine, tmp_path / "cpu")
    assert on_cuda["cycle"]["status"] == on_cpu["cycle"]["status"] == "completed"
    acc_cuda, acc_cpu = on_cuda["summary"]["test_accuracy"], on_cpu["summary"]["test_accuracy"]
    # both run on the CPU with the preset's seed; the two builds' kernels may round differently
    assert abs(acc_cuda - acc_cpu) <= 0.02, (acc_cuda, acc_cpu)


def test_matrix_cuda_rows_build_from_the_cpu_rows_base():
    for row in load_matrix().images:
        if row.cuda is not None:
            assert row.base_image == load_matrix().image(row.name, "cpu").base_image
            assert version_tuple(row.cuda) >= (12, 0)


def test_envkit_images_test_passes_on_the_image_reference(cuda_image: BuiltImage):
    venv = Path(os.environ.get("VIRTUAL_ENV", Path(checks.__file__).parents[2] / ".venv"))
    envkit = venv / "bin" / "envkit"
    proc = subprocess.run(
        [str(envkit), "images", "test", cuda_image.tag, "--json"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    report = json.loads(proc.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert proc.returncode == 0 and failed == [], failed
    assert report["row"] == cuda_image.row.key
    names = {c["name"] for c in report["checks"]}
    assert {"every CUDA library loads without a GPU", "no CUDA soname twice", "PID 1 is tini"} <= names
