"""Prove a built image from the outside, through docker-py (Docker or Podman's socket).

`envkit images test IMAGE` runs these on any image reference (built here, or
pulled from a registry) against the matrix row its labels name. Each check
returns what it saw, so a failure names the evidence. CUDA rows add the CUDA
checks: the framework's CUDA build and architectures, every CUDA library
loading without a GPU (envkit/images/cudalibs.py, run inside), no soname
twice, the NVIDIA Container Toolkit's environment, and doctor's verdicts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from envkit.matrix import ImageRow, Matrix, MatrixError, major_minor, version_tuple

SHM_WARNING = "/dev/shm is"


@dataclass(frozen=True)
class ImageCheck:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunOutput:
    exit_code: int
    stdout: str
    stderr: str


def engine_kind(client: Any) -> str:
    """'podman' when the socket is Podman's Docker-compatible service, else 'docker'."""
    try:
        components = client.version().get("Components") or []
    except Exception:  # an engine that cannot say is treated as Docker
        return "docker"
    names = " ".join(str(c.get("Name", "")) for c in components).lower()
    return "podman" if "podman" in names else "docker"


def run_in_image(
    client: Any,
    image: str,
    command: list[str],
    *,
    timeout: int = 300,
    **run_kwargs: Any,
) -> RunOutput:
    """Run `command` in a fresh container, wait, and return its exit code and output."""
    container = client.containers.run(image, command, detach=True, **run_kwargs)
    try:
        status = container.wait(timeout=timeout)
        out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        err = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        return RunOutput(int(status.get("StatusCode", -1)), out, err)
    finally:
        container.remove(force=True)


def _py(row: ImageRow) -> str:
    module = "torch" if row.framework == "pytorch" else "tensorflow"
    return (
        "import json, platform, importlib; "
        f"fw = importlib.import_module('{module}'); "
        "print(json.dumps({'python': platform.python_version(), 'framework': fw.__version__}))"
    )


def check_image(client: Any, row: ImageRow, tag: str) -> list[ImageCheck]:
    """The outside-in checks of one image against its matrix row."""
    checks: list[ImageCheck] = []
    image = client.images.get(tag)
    labels = image.labels or {}
    wrong = {k: (labels.get(k), v) for k, v in row.labels().items() if labels.get(k) != v}
    checks.append(ImageCheck("labels equal the matrix row", not wrong, json.dumps(wrong) if wrong else "ok"))

    run = run_in_image(client, tag, ["python", "-c", _py(row)], shm_size="1g")
    try:
        seen = json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        seen = {}
    py_ok = seen.get("python", "").startswith(row.python + ".")
    # the local label (+cpu, +cu130) is the build, not the version
    public = str(seen.get("framework", "0")).split("+", 1)[0]
    fw_ok = version_tuple(public)[:3] == version_tuple(row.version)[:3]
    checks.append(ImageCheck(f"python {row.python}", py_ok, seen.get("python", run.stderr[-200:])))
    checks.append(
        ImageCheck(f"{row.framework} {row.version}", fw_ok, seen.get("framework", run.stderr[-200:]))
    )

    run = run_in_image(client, tag, ["sh", "-c", "id -u; cat /proc/1/comm; pip check"], shm_size="1g")
    lines = run.stdout.strip().splitlines()
    uid = lines[0] if lines else "?"
    pid1 = lines[1] if len(lines) > 1 else "?"
    checks.append(ImageCheck("runs as a non-root user", uid != "0" and uid != "?", f"uid {uid}"))
    checks.append(ImageCheck("PID 1 is tini", pid1 == "tini", pid1))
    checks.append(
        ImageCheck("pip check", run.exit_code == 0, " ".join(lines[2:])[-200:] or run.stderr[-200:])
    )

    warned = run_in_image(client, tag, ["true"])
    quiet = run_in_image(client, tag, ["true"], shm_size="1g")
    checks.append(
        ImageCheck(
            "/dev/shm warning only below 1 GiB",
            SHM_WARNING in warned.stderr and SHM_WARNING not in quiet.stderr,
            f"64 MiB: {'warned' if SHM_WARNING in warned.stderr else 'silent'}; "
            f"1 GiB: {'warned' if SHM_WARNING in quiet.stderr else 'silent'}",
        )
    )

    if row.cuda is None:
        scan = cuda_scan(client, tag)
        libs = sorted(scan.get("libraries", {}))
        checks.append(ImageCheck("no CUDA library in a CPU image", not libs, ", ".join(libs[:5]) or "none"))
    else:
        checks += cuda_checks(client, row, tag, image.attrs)
    return checks


# -- CUDA rows -------------------------------------------------------------------

CUDALIBS = Path(__file__).with_name("cudalibs.py")
# The datacenter GPUs the matrix names: A100 (sm_80), H100/H200 (sm_90), B200 (sm_100,
# from CUDA 12.8 on). PTX for an arch (compute_XX) counts: the driver JITs it.
ARCH_SINCE = {"sm_80": (11, 0), "sm_90": (11, 8), "sm_100": (12, 8)}


def required_archs(cuda: str) -> list[str]:
    have = version_tuple(cuda)[:2]
    return [arch for arch, since in ARCH_SINCE.items() if have >= since]


def covers(arch_list: list[str], arch: str) -> bool:
    return arch in arch_list or arch.replace("sm_", "compute_") in arch_list


def image_env(attrs: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in (attrs.get("Config", {}).get("Env") or []) if "=" in e)


def cudalibs(client: Any, tag: str, command: str) -> dict[str, Any]:
    """Run envkit/images/cudalibs.py `command` inside `tag` (piped in: any image, no checkout needed)."""
    source = CUDALIBS.read_text(encoding="utf-8")
    run = run_in_image(client, tag, ["python", "-c", source, command], shm_size="1g", timeout=600)
    try:
        return dict(json.loads(run.stdout))
    except ValueError:
        return {"error": (run.stderr or run.stdout)[-300:]}


def cuda_scan(client: Any, tag: str) -> dict[str, Any]:
    return cudalibs(client, tag, "scan")


TORCH_PROBE = (
    "import json, torch; "
    "nccl = getattr(torch.cuda, 'nccl', None); "
    "print(json.dumps({'cuda': torch.version.cuda, 'archs': torch.cuda.get_arch_list(), "
    "'cudnn': torch.backends.cudnn.version(), 'nccl': list(torch.cuda.nccl.version()), "
    "'available': torch.cuda.is_available()}))"
)
TF_PROBE = (
    "import json, tensorflow as tf; b = tf.sysconfig.get_build_info(); "
    "print(json.dumps({'cuda': b.get('cuda_version'), 'cudnn': b.get('cudnn_version'), "
    "'archs': list(b.get('cuda_compute_capabilities') or []), 'is_cuda_build': b.get('is_cuda_build'), "
    "'gpus': len(tf.config.list_physical_devices('GPU'))}))"
)


def framework_cuda(client: Any, row: ImageRow, tag: str) -> dict[str, Any]:
    """What the framework inside says of its CUDA build (no GPU needed)."""
    probe = TORCH_PROBE if row.framework == "pytorch" else TF_PROBE
    run = run_in_image(
        client, tag, ["python", "-c", probe], shm_size="1g", environment={"TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    try:
        return dict(json.loads(run.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"error": run.stderr[-300:]}


def expected_cuda(row: ImageRow, matrix: Matrix | None = None) -> tuple[str, str | None]:
    """(CUDA, cuDNN or None) the framework must report: the row's, and TF's tested pair."""
    if row.framework == "tensorflow":
        from envkit.matrix import load_matrix

        tested = (matrix or load_matrix()).tensorflow_cuda.get(major_minor(row.version), {})
        return tested.get("cuda", row.cuda or ""), tested.get("cudnn")
    return row.cuda or "", None


def cuda_checks(client: Any, row: ImageRow, tag: str, attrs: dict[str, Any]) -> list[ImageCheck]:
    checks: list[ImageCheck] = []
    env = image_env(attrs)
    want_env = {
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "NVIDIA_REQUIRE_CUDA": f"cuda>={row.cuda}",
    }
    wrong = {k: env.get(k) for k, v in want_env.items() if env.get(k) != v}
    ld_ok = "/usr/local/nvidia/lib64" in env.get("LD_LIBRARY_PATH", "").split(":")
    checks.append(
        ImageCheck(
            "NVIDIA Container Toolkit environment",
            not wrong and ld_ok,
            json.dumps(wrong) if wrong else f"ok; LD_LIBRARY_PATH={env.get('LD_LIBRARY_PATH', '')}",
        )
    )
    compat = (attrs.get("Config", {}).get("Labels") or {}).get("io.envkit.cuda-compat")
    checks.append(
        ImageCheck("cuda-compat label", compat in ("absent", "from-base"), f"io.envkit.cuda-compat={compat}")
    )

    seen = framework_cuda(client, row, tag)
    want_cuda, want_cudnn = expected_cuda(row)
    got_cuda = str(seen.get("cuda") or "")
    checks.append(
        ImageCheck(
            f"{row.framework} built for CUDA {want_cuda}",
            bool(got_cuda) and major_minor(got_cuda) == major_minor(want_cuda),
            got_cuda or str(seen.get("error", ""))[-200:],
        )
    )
    archs = [str(a) for a in seen.get("archs", [])]
    missing = [a for a in required_archs(want_cuda) if not covers(archs, a)]
    checks.append(
        ImageCheck(
            f"GPU architectures {', '.join(required_archs(want_cuda))}",
            bool(archs) and not missing,
            f"missing {missing}" if missing else " ".join(archs),
        )
    )
    if row.framework == "pytorch":
        cudnn, nccl = seen.get("cudnn"), seen.get("nccl")
        checks.append(ImageCheck("cuDNN version readable", isinstance(cudnn, int) and cudnn > 0, str(cudnn)))
        checks.append(ImageCheck("NCCL version readable", bool(nccl), ".".join(map(str, nccl or []))))
    else:
        got = str(seen.get("cudnn") or "")
        ok = bool(got) and want_cudnn is not None and _same_prefix(got, want_cudnn)
        checks.append(ImageCheck(f"cuDNN {want_cudnn} in the build info", ok, got or "none"))

    loads = cudalibs(client, tag, "dlopen")
    failed = loads.get("failed", {"?": loads.get("error", "no answer")})
    checks.append(
        ImageCheck(
            "every CUDA library loads without a GPU",
            bool(loads.get("loaded")) and not failed,
            f"{len(loads.get('loaded', []))} loaded"
            + (f"; failed: {json.dumps(failed)[:300]}" if failed else ""),
        )
    )
    scan = cuda_scan(client, tag)
    dups = scan.get("duplicates", {"?": scan.get("error")})
    checks.append(ImageCheck("no CUDA soname twice", not dups, json.dumps(dups)[:300] if dups else "ok"))

    doctor = run_in_image(client, tag, ["envkit", "doctor", "--json"], shm_size="1g", timeout=600)
    strict = run_in_image(client, tag, ["envkit", "doctor", "--require-gpu"], shm_size="1g", timeout=600)
    checks.append(
        ImageCheck(
            "doctor: exit 0 without a GPU, 1 with --require-gpu",
            doctor.exit_code == 0 and strict.exit_code == 1,
            f"doctor {doctor.exit_code}, --require-gpu {strict.exit_code}",
        )
    )
    if row.variant == "cuda-devel":
        nvcc = run_in_image(
            client,
            tag,
            ["sh", "-c", 'nvcc --version && test -f "$CUDA_HOME/include/cuda_runtime.h"'],
            shm_size="1g",
        )
        checks.append(
            ImageCheck("nvcc and CUDA headers (CUDA_HOME)", nvcc.exit_code == 0, nvcc.stdout.strip()[-80:])
        )
    return checks


def _same_prefix(got: str, want: str) -> bool:
    """'9' or '9.3.0' against the matrix's '9.3': equal on the parts both give."""
    g, w = version_tuple(got), version_tuple(want)
    n = min(len(g), len(w))
    return n > 0 and g[:n] == w[:n]


def row_for_image(matrix: Matrix, labels: dict[str, str]) -> ImageRow:
    """The matrix row an image's io.envkit labels name (any tag, any registry)."""
    key = (labels.get("io.envkit.framework"), labels.get("io.envkit.variant"))
    for row in matrix.images:
        if (row.framework, row.variant) == key:
            return row
    raise MatrixError(
        f"its labels name no matrix row (io.envkit.framework={key[0]}, io.envkit.variant={key[1]})"
    )
