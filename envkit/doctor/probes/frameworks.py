"""PyTorch and TensorFlow probes: each in its own interpreter, under a timeout.

A hung CUDA initialisation, a segfaulting extension or a library that cannot
load must never hang or kill doctor: the framework runs in a child process
(`envkit/doctor/scripts/*_probe.py`) through envkit.process.run_process, in its
own session, and the whole process group is killed when the timeout passes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from envkit import tf_log
from envkit.doctor.model import ERROR, FAIL, NOT_APPLICABLE, NOT_PRESENT, OK, WARN, Check, ProbeResult
from envkit.doctor.options import DoctorOptions, gpu_expected
from envkit.process import run_process
from envkit.vocab import Framework as FrameworkName

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
MARK = "ENVKIT_PROBE_JSON "

# TensorFlow's stderr lines that mean a GPU library did not load.
TF_LIBRARY_PATTERNS = (
    "Could not load dynamic library",
    "Cannot dlopen some GPU libraries",
    "failed call to cuInit",
    "Could not find cuda drivers",
    "Unable to register cuDNN factory",
    "Unable to register cuBLAS factory",
    "libcuda reported version is",
    "CUDA_ERROR",
)


@dataclass(frozen=True)
class Framework:
    area: str  # also the check area: pytorch | tensorflow (envkit.vocab.Framework)
    module: str  # importable name
    script: str  # probe script in envkit/doctor/scripts
    install_hint: str
    distributions: tuple[str, ...] = field(default=())


FRAMEWORKS = (
    Framework(
        FrameworkName.PYTORCH.value, "torch", "torch_probe.py", "pip install 'envkit[torch]'", ("torch",)
    ),
    Framework(
        FrameworkName.TENSORFLOW.value,
        "tensorflow",
        "tf_probe.py",
        "pip install 'envkit[tf]'",
        ("tensorflow", "tensorflow-cpu", "tf-nightly", "keras"),
    ),
)
BY_AREA = {fw.area: fw for fw in FRAMEWORKS}

# A probe past its timeout is hung (CUDA init, an import on a dead mount): SIGTERM first,
# SIGKILL after this long; it has already had its whole --timeout.
KILL_GRACE_S = 1.0


@dataclass
class ScriptOutcome:
    """How a probe child process ended."""

    state: str  # 'ok' (payload read), 'timeout', 'crashed' (no payload / non-zero exit)
    payload: dict[str, Any] | None
    stderr: str
    returncode: int | None
    elapsed_s: float


def run_probe_script(
    python: str, script: Path, timeout_s: float, env: dict[str, str] | None = None
) -> ScriptOutcome:
    """Run `python script`; its whole process group is killed if it outlives `timeout_s`."""
    child_env = dict(os.environ if env is None else env)
    loud = tf_log.verbose()
    if not loud:
        # Hide TF's INFO lines (CPU feature banners) but keep its WARNINGs: library-load failures.
        child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        result = run_process([python, str(script)], timeout_s=timeout_s, env=child_env, grace_s=KILL_GRACE_S)
    except OSError as exc:
        return ScriptOutcome("crashed", None, f"cannot start {python}: {exc}", None, 0.0)
    if loud and result.stderr:
        sys.stderr.write(result.stderr)  # ENVKIT_TF_VERBOSE=1: the frameworks' own log, as they wrote it
        sys.stderr.flush()
    if result.timed_out:
        return ScriptOutcome("timeout", None, result.stderr, None, result.duration_s)
    payload = None
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(MARK):
            try:
                payload = json.loads(line[len(MARK) :])
            except json.JSONDecodeError:
                payload = None
            break
    state = "ok" if payload is not None and result.returncode == 0 else "crashed"
    return ScriptOutcome(state, payload, result.stderr, result.returncode, result.duration_s)


def arch_support(capability: str, arch_list: list[str]) -> str:
    """'native' (SASS for cc `capability`), 'ptx' (JIT from older PTX) or 'none'.

    `arch_list` as frameworks report it: ['sm_80', 'sm_90', 'compute_90'].
    """
    major, minor = (int(x) for x in capability.split(".")[:2])
    want = major * 10 + minor
    if f"sm_{want}a" in arch_list:
        return "native"
    for arch in arch_list:
        # A cubin for X.y runs on X.z with z >= y ("a"-suffixed ones only on their own X.y).
        code = arch.removeprefix("sm_")
        if arch.startswith("sm_") and code.isdigit() and int(code) // 10 == major and int(code) % 10 <= minor:
            return "native"
    for arch in arch_list:
        if arch.startswith("compute_"):
            digits = "".join(ch for ch in arch.removeprefix("compute_") if ch.isdigit())
            if digits and int(digits) <= want:
                return "ptx"
    return "none"


def _installed(fw: Framework, python: str) -> bool:
    """Cheap pre-check (no import) when probing our own interpreter."""
    if python != sys.executable:
        return True  # let the child find out
    return importlib.util.find_spec(fw.module) is not None


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln for ln in tf_log.strip_info(text).strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[:400]


def probe_framework(fw: Framework, opts: DoctorOptions) -> ProbeResult:
    """Run one framework's probe script and judge what it saw."""
    if not _installed(fw, opts.python):
        return ProbeResult(
            [Check(fw.area, "installed", NOT_PRESENT, f"{fw.module} is not installed", fw.install_hint)],
            {"installed": False},
        )
    script = opts.framework_scripts.get(fw.area, SCRIPTS / fw.script)
    outcome = run_probe_script(opts.python, script, opts.timeout_s)
    if outcome.state == "timeout":
        return ProbeResult(
            [
                Check(
                    fw.area,
                    "import",
                    ERROR,
                    f"no answer within {opts.timeout_s:g} s (killed): a hung CUDA init or import",
                    f"see where it hangs: {opts.python} -X faulthandler -c 'import {fw.module}' ; check "
                    "`dmesg` for Xid errors, nvidia-persistenced, and CUDA_VISIBLE_DEVICES; "
                    "raise --timeout on a slow disk",
                    {"timeout_s": opts.timeout_s, "stderr_tail": _tail(outcome.stderr)},
                    round(outcome.elapsed_s, 3),
                )
            ],
            {"installed": True, "state": "timeout"},
        )
    if outcome.state == "crashed":
        how = (
            f"killed by signal {-outcome.returncode}"
            if outcome.returncode is not None and outcome.returncode < 0
            else f"exit {outcome.returncode}"
        )
        return ProbeResult(
            [
                Check(
                    fw.area,
                    "import",
                    ERROR,
                    f"probe process died ({how}): {_tail(outcome.stderr) or 'no output'}",
                    f"reproduce with: {opts.python} -c 'import {fw.module}'",
                    {"returncode": outcome.returncode, "stderr_tail": _tail(outcome.stderr, 10)},
                    round(outcome.elapsed_s, 3),
                )
            ],
            {"installed": True, "state": "crashed"},
        )
    payload = outcome.payload or {}
    if "import_error" in payload:
        missing = payload["import_error"].startswith("ModuleNotFoundError")
        return ProbeResult(
            [
                Check(
                    fw.area,
                    "import",
                    NOT_PRESENT if missing else FAIL,
                    f"import {fw.module} failed: {payload['import_error'][:300]}",
                    fw.install_hint
                    if missing
                    else f"reinstall it ({fw.install_hint}) and read the error above",
                    {"stderr_tail": _tail(outcome.stderr, 10)},
                    round(outcome.elapsed_s, 3),
                )
            ],
            {"installed": not missing, "state": "import_error"},
        )
    judge = {FrameworkName.PYTORCH: _judge_pytorch, FrameworkName.TENSORFLOW: _judge_tensorflow}[
        FrameworkName(fw.area)
    ]
    checks, facts = judge(payload, outcome, opts)
    for c in checks:
        c.elapsed_s = round(outcome.elapsed_s, 3)
    facts.update(installed=True, state="ok", elapsed_s=round(outcome.elapsed_s, 3))
    return ProbeResult(checks, facts)


# --- judging ----------------------------------------------------------------------


def _build_check(area: str, gpu_build: bool, build_text: str, opts: DoctorOptions, fix: str) -> Check:
    if gpu_build:
        return Check(area, "build", OK, build_text)
    if opts.require_gpu or gpu_expected(opts):
        return Check(
            area,
            "build",
            FAIL if opts.require_gpu else WARN,
            f"{build_text}: a CPU-only build on a machine that should use its GPU",
            fix,
        )
    return Check(area, "build", OK, build_text)


def _matmul_check(area: str, matmuls: list[dict[str, Any]]) -> Check:
    if not matmuls:
        return Check(area, "matmul", ERROR, "the probe ran no matmul", "an envkit bug: please report it")
    bad = [m for m in matmuls if not m.get("ok")]
    shown = ", ".join(
        f"{m['device']} " + (f"rel.err {m['max_rel_err']:.1e}" if "max_rel_err" in m else "failed")
        for m in matmuls
    )
    if bad:
        reasons = "; ".join(
            f"{m['device']}: {m.get('error') or 'result differs from the CPU float64 product'}" for m in bad
        )
        return Check(
            area,
            "matmul",
            FAIL,
            f"256x256 fp32 matmul wrong or failed on {len(bad)} device(s): {reasons[:300]}",
            "a wrong product means broken kernels or hardware: check `dmesg` for Xid errors and "
            "run `dcgmi diag -r 2`; a failure names the missing library",
            {"matmul": matmuls},
        )
    return Check(
        area, "matmul", OK, f"256x256 fp32 matmul matches float64 CPU: {shown}", details={"matmul": matmuls}
    )


def cuda_init_warning(stderr: str) -> str | None:
    """The framework's own words when CUDA failed to initialise (e.g. torch's UserWarning)."""
    for line in stderr.splitlines():
        low = line.lower()
        if ("cuda initialization" in low or "cuinit" in low or "driver version is insufficient" in low) and (
            "warn" in low or "error" in low or "fail" in low
        ):
            return line.strip()[:300]
    return None


def _gpu_device_check(
    area: str, gpu_build: bool, gpus: list[dict[str, Any]], opts: DoctorOptions, stderr: str = ""
) -> Check:
    expected = gpu_expected(opts)
    if not gpu_build:
        return Check(area, "gpu devices", NOT_APPLICABLE, "CPU build: no GPU devices to use")
    if not gpus:
        if expected:
            why = cuda_init_warning(stderr)
            return Check(
                area,
                "gpu devices",
                FAIL,
                "CUDA build, but it sees no GPU" + (f": {why}" if why else ""),
                "check the driver (area driver/gpu above), CUDA_VISIBLE_DEVICES, and --gpus for containers",
            )
        return Check(
            area,
            "gpu devices",
            NOT_APPLICABLE,
            "CUDA build, no GPU visible: on a GPU host run the container with `--gpus all` "
            "(NVIDIA Container Toolkit); CPU work runs meanwhile",
        )
    names = ", ".join(f"{g['device']} {g.get('name')} (cc {g.get('capability')})" for g in gpus)
    return Check(area, "gpu devices", OK, names, details={"devices": gpus})


def _judge_pytorch(payload: dict[str, Any], outcome: ScriptOutcome, opts: DoctorOptions):
    from envkit.matrix import MatrixError, load_matrix, major_minor

    version = payload.get("version", "?")
    cuda, hip = payload.get("cuda"), payload.get("hip")
    gpu_build = bool(cuda or hip)
    if cuda:
        extra = [f"cuDNN {payload.get('cudnn') or 'none'}", f"NCCL {payload.get('nccl') or 'none'}"]
        build_text = f"torch {version}, CUDA {cuda} build ({', '.join(extra)})"
    elif hip:
        build_text = f"torch {version}, ROCm {hip} build"
    else:
        build_text = (
            f"torch {version}, CPU build ({payload.get('cpu_capability')}, {payload.get('threads')} threads)"
        )
    try:
        row = load_matrix().image("pytorch", "cuda")
        fix = f"pip install torch=={major_minor(version)}.* --index-url {row.wheel_index}"
    except MatrixError:
        fix = "install a CUDA build from https://download.pytorch.org/whl/"
    checks = [_build_check("pytorch", gpu_build, build_text, opts, fix)]
    checks[0].details = {k: payload.get(k) for k in ("version", "cuda", "hip", "cudnn", "nccl", "arch_list")}

    gpus = [d for d in payload.get("devices", []) if d["device"].startswith("cuda")]
    for g in gpus:
        if g.get("capability") and cuda:  # ROCm builds name gfx targets, not sm_XY
            g["arch_support"] = arch_support(g["capability"], payload.get("arch_list") or [])
    dev_check = _gpu_device_check("pytorch", gpu_build, gpus, opts, outcome.stderr)
    unsupported = [g for g in gpus if g.get("arch_support") == "none"]
    jit = [g for g in gpus if g.get("arch_support") == "ptx"]
    arch = " ".join(payload.get("arch_list") or [])
    if unsupported:
        caps = ", ".join(f"sm_{g['capability'].replace('.', '')}" for g in unsupported)
        dev_check = Check(
            "pytorch",
            "gpu devices",
            FAIL,
            f"{caps} is not in this build's arch list ({arch}): no kernels for this GPU",
            "install a torch build that lists this GPU's architecture (a newer CUDA wheel index)",
            {"devices": gpus, "arch_list": payload.get("arch_list")},
        )
    elif jit:
        caps = ", ".join(f"sm_{g['capability'].replace('.', '')}" for g in jit)
        dev_check = Check(
            "pytorch",
            "gpu devices",
            WARN,
            f"{caps} runs only through PTX JIT ({arch}): slow first start, some kernels missing",
            "install a torch build compiled for this GPU",
            {"devices": gpus, "arch_list": payload.get("arch_list")},
        )
    checks.append(dev_check)
    checks.append(_matmul_check("pytorch", payload.get("matmul", [])))
    facts = {
        "version": version,
        "cuda": cuda,
        "hip": hip,
        "cudnn": payload.get("cudnn"),
        "nccl": payload.get("nccl"),
        "gpu_build": gpu_build,
        "gpus_seen": len(gpus),
    }
    return checks, facts


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _judge_tensorflow(payload: dict[str, Any], outcome: ScriptOutcome, opts: DoctorOptions):
    version = payload.get("version", "?")
    gpu_build = bool(payload.get("is_cuda_build") or payload.get("build_info", {}).get("is_rocm_build"))
    keras = _dist_version("keras")
    package = "tensorflow-cpu" if _dist_version("tensorflow-cpu") else "tensorflow"
    if gpu_build:
        build_text = (
            f"{package} {version}, CUDA {payload.get('cuda')} build, cuDNN {payload.get('cudnn')}, "
            f"compute capabilities {payload.get('cuda_compute_capabilities')}"
        )
    else:
        build_text = f"{package} {version}, CPU build"
    if keras:
        build_text += f", keras {keras}"
    checks = [
        _build_check(
            "tensorflow",
            gpu_build,
            build_text,
            opts,
            "pip uninstall tensorflow-cpu && pip install 'tensorflow[and-cuda]'",
        )
    ]
    checks[0].details = {"build_info": payload.get("build_info"), "keras": keras}

    gpus = [d for d in payload.get("devices", []) if d.get("type") == "GPU"]
    dev_check = _gpu_device_check("tensorflow", gpu_build, gpus, opts, outcome.stderr)
    built_for = payload.get("cuda_compute_capabilities") or []
    unsupported = [
        g for g in gpus if g.get("capability") and arch_support(g["capability"], built_for) == "none"
    ]
    if built_for and unsupported:
        caps = ", ".join(f"sm_{g['capability'].replace('.', '')}" for g in unsupported)
        dev_check = Check(
            "tensorflow",
            "gpu devices",
            FAIL,
            f"{caps} is not among the build's compute capabilities ({' '.join(built_for)})",
            "install a TensorFlow release built for this GPU (see the compat area)",
            {"devices": gpus, "cuda_compute_capabilities": built_for},
        )
    checks.append(dev_check)

    lib_lines = [
        ln.strip() for ln in outcome.stderr.splitlines() if any(p in ln for p in TF_LIBRARY_PATTERNS)
    ]
    if lib_lines:
        expected = gpu_expected(opts)
        checks.append(
            Check(
                "tensorflow",
                "gpu libraries",
                (FAIL if not gpus else WARN) if expected else OK,
                f"TensorFlow could not load GPU libraries: {' | '.join(dict.fromkeys(lib_lines))[:400]}",
                "install the CUDA libraries TF was built against: pip install 'tensorflow[and-cuda]' "
                "(see the compat area for versions)"
                if expected
                else "harmless on a machine without a GPU",
                {"messages": lib_lines[:20]},
            )
        )
    elif gpu_build:
        checks.append(Check("tensorflow", "gpu libraries", OK, "no GPU library-loading errors"))
    checks.append(_matmul_check("tensorflow", payload.get("matmul", [])))
    facts = {
        "version": version,
        "cuda": payload.get("cuda"),
        "cudnn": payload.get("cudnn"),
        "gpu_build": gpu_build,
        "gpus_seen": len(gpus),
    }
    return checks, facts


def probe_pytorch(opts: DoctorOptions) -> ProbeResult:
    return probe_framework(BY_AREA[FrameworkName.PYTORCH], opts)


def probe_tensorflow(opts: DoctorOptions) -> ProbeResult:
    return probe_framework(BY_AREA[FrameworkName.TENSORFLOW], opts)
