"""Docker probe (docker-py): engine, NVIDIA runtime or CDI, nvidia-ctk; --deep GPU smoke test."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from typing import Any

from envkit.doctor.model import ERROR, FAIL, NOT_APPLICABLE, NOT_PRESENT, OK, WARN, Check, ProbeResult
from envkit.doctor.options import DoctorOptions, gpu_expected

CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
# A result row of `dcgmi diag`'s table: "| Memory Bandwidth          | Fail          |".
_DIAG_FAIL_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*Fail\b", re.MULTILINE)
TOOLKIT_HINT = (
    "install the NVIDIA Container Toolkit and configure Docker: "
    "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker (make provision)"
)


def _client(timeout: float):
    import docker

    return docker.from_env(timeout=max(5, int(timeout)))


def cdi_specs(opts: DoctorOptions) -> list[str]:
    """NVIDIA CDI spec files (nvidia-ctk cdi generate writes /etc/cdi/nvidia.yaml)."""
    found: list[str] = []
    for d in CDI_DIRS:
        for pattern in ("*.yaml", "*.json"):
            found += [p for p in glob.glob(str(opts.path(d) / pattern)) if "nvidia" in p.lower()]
    return sorted(found)


def probe_docker(opts: DoctorOptions) -> ProbeResult:
    """Can this machine run GPU containers?"""
    expected = gpu_expected(opts)
    checks: list[Check] = []
    facts: dict[str, Any] = {"engine": False, "nvidia_runtime": False, "cdi": False}
    try:
        import docker  # noqa: F401  (docker-py: only its presence is checked here)
    except ImportError:
        checks.append(
            Check("docker", "engine", NOT_PRESENT, "docker-py is not installed", "pip install docker")
        )
        return ProbeResult(checks, facts)
    try:
        client = _client(10)
        client.ping()
        info = client.info()
    except Exception as exc:  # docker.errors.DockerException wraps socket/permission errors
        text = str(exc)
        if "Permission denied" in text:
            status, hint = (
                WARN,
                "add your user to the docker group: sudo usermod -aG docker $USER, log in again",
            )
        elif shutil.which("docker") or shutil.which("dockerd"):
            status, hint = (
                WARN,
                "start the engine: sudo systemctl start docker (here: scripts/docker-engine.sh)",
            )
        else:
            status, hint = NOT_PRESENT, "install Docker to build and run the envkit images (make provision)"
        checks.append(Check("docker", "engine", status, f"no Docker engine answers: {text[:200]}", hint))
        return ProbeResult(checks, facts)

    runtimes = sorted((info.get("Runtimes") or {}).keys())
    facts.update(engine=True, server_version=info.get("ServerVersion"), runtimes=runtimes)
    checks.append(
        Check(
            "docker",
            "engine",
            OK,
            f"Docker {info.get('ServerVersion')} ({info.get('OperatingSystem')}, "
            f"{info.get('Driver')} storage, cgroup v{info.get('CgroupVersion') or '?'})",
            details={"server_version": info.get("ServerVersion"), "runtimes": runtimes},
        )
    )

    nvidia_runtime = "nvidia" in runtimes
    specs = cdi_specs(opts)
    facts.update(nvidia_runtime=nvidia_runtime, cdi=bool(specs), default_runtime=info.get("DefaultRuntime"))
    if nvidia_runtime or specs:
        how = []
        if nvidia_runtime:
            how.append("nvidia runtime" + (" (default)" if info.get("DefaultRuntime") == "nvidia" else ""))
        if specs:
            how.append(f"CDI spec {', '.join(specs)}")
        checks.append(Check("docker", "gpu runtime", OK, "; ".join(how), details={"cdi_specs": specs}))
    elif expected:
        checks.append(
            Check(
                "docker",
                "gpu runtime",
                FAIL,
                f"neither an nvidia runtime nor a CDI spec (runtimes: {', '.join(runtimes)})",
                TOOLKIT_HINT,
            )
        )
    else:
        checks.append(
            Check(
                "docker",
                "gpu runtime",
                NOT_APPLICABLE,
                f"no GPU here; runtimes: {', '.join(runtimes)} (no nvidia runtime, no CDI spec)",
            )
        )

    ctk = shutil.which("nvidia-ctk")
    if ctk:
        try:
            out = subprocess.run([ctk, "--version"], capture_output=True, text=True, timeout=10).stdout
            first = out.strip().splitlines()[0] if out.strip() else "unknown version"
        except (OSError, subprocess.SubprocessError) as exc:
            first = str(exc)
        checks.append(Check("docker", "nvidia-ctk", OK, f"{first} at {ctk}"))
    else:
        checks.append(
            Check(
                "docker",
                "nvidia-ctk",
                WARN if expected else NOT_APPLICABLE,
                "nvidia-ctk not on PATH" + ("" if expected else " (no GPU here)"),
                TOOLKIT_HINT if expected else "",
            )
        )
    return ProbeResult(checks, facts)


def deep_image(opts: DoctorOptions) -> str:
    if opts.deep_image:
        return opts.deep_image
    from envkit.matrix import load_matrix

    return load_matrix().image("pytorch", "cuda").base_image


def gpu_container_smoke(opts: DoctorOptions, facts: dict[str, Any]) -> Check:
    """--deep: `docker run --rm --gpus all IMAGE nvidia-smi -L`, where a GPU host allows it."""
    docker_facts = facts.get("docker", {})
    if "gpu" not in facts:
        return Check("docker", "gpu container", NOT_APPLICABLE, "--deep: skipped, the gpu area did not run")
    gpu_count = facts["gpu"].get("gpu_count", 0)
    if not gpu_count:
        return Check(
            "docker", "gpu container", NOT_APPLICABLE, "--deep: no GPU on this host to pass to a container"
        )
    if not docker_facts.get("engine"):
        return Check("docker", "gpu container", NOT_APPLICABLE, "--deep: no Docker engine")
    if not (docker_facts.get("nvidia_runtime") or docker_facts.get("cdi")):
        return Check(
            "docker", "gpu container", FAIL, "--deep: Docker has no NVIDIA runtime or CDI spec", TOOLKIT_HINT
        )
    image = deep_image(opts)
    try:
        import docker

        client = _client(opts.timeout_s)
        out = client.containers.run(
            image,
            ["nvidia-smi", "-L"],
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
            remove=True,
            stdout=True,
            stderr=True,
        )
    except Exception as exc:
        return Check(
            "docker",
            "gpu container",
            FAIL,
            f"--gpus all container ({image}) failed: {str(exc)[:300]}",
            f"{TOOLKIT_HINT}; or pass an image that exists here with --deep-image",
        )
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("GPU ")]
    if len(lines) != gpu_count:
        return Check(
            "docker",
            "gpu container",
            FAIL,
            f"the container saw {len(lines)} of {gpu_count} GPU(s)",
            "check NVIDIA_VISIBLE_DEVICES and the toolkit's config "
            "(/etc/nvidia-container-runtime/config.toml)",
            {"output": lines},
        )
    return Check(
        "docker",
        "gpu container",
        OK,
        f"--gpus all in {image}: {len(lines)} GPU(s) seen",
        details={"output": lines},
    )


def probe_dcgm(opts: DoctorOptions) -> ProbeResult:
    """DCGM: present? With --deep, the quick diagnostic `dcgmi diag -r 1`."""
    expected = gpu_expected(opts)
    dcgmi = shutil.which("dcgmi")
    if dcgmi is None:
        if expected:
            return ProbeResult(
                [
                    Check(
                        "dcgm",
                        "dcgmi",
                        NOT_PRESENT,
                        "DCGM (dcgmi) is not installed",
                        "install datacenter-gpu-manager for health checks and `dcgmi diag`",
                    )
                ]
            )
        return ProbeResult([Check("dcgm", "dcgmi", NOT_APPLICABLE, "no GPU here; DCGM not installed")])
    if not opts.deep:
        return ProbeResult(
            [
                Check(
                    "dcgm",
                    "dcgmi",
                    OK,
                    f"dcgmi at {dcgmi}",
                    "run `envkit doctor --deep` for `dcgmi diag -r 1`",
                )
            ]
        )
    try:
        proc = subprocess.run(
            [dcgmi, "diag", "-r", "1"], capture_output=True, text=True, timeout=max(opts.timeout_s, 120)
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(
            [
                Check(
                    "dcgm",
                    "diag -r 1",
                    ERROR,
                    "dcgmi diag -r 1 did not finish in time",
                    "run it by hand and watch for a hung GPU; check `dmesg` for Xid errors",
                )
            ]
        )
    text = proc.stdout + proc.stderr
    if "host engine" in text.lower() and proc.returncode != 0:
        return ProbeResult(
            [
                Check(
                    "dcgm",
                    "diag -r 1",
                    WARN,
                    f"dcgmi cannot reach nv-hostengine: {text.strip()[:200]}",
                    "start it: sudo systemctl start nvidia-dcgm (or nv-hostengine)",
                )
            ]
        )
    failed = [f"{m.group(1)}: Fail" for m in _DIAG_FAIL_ROW.finditer(text)]
    if proc.returncode != 0 or failed:
        return ProbeResult(
            [
                Check(
                    "dcgm",
                    "diag -r 1",
                    FAIL,
                    "dcgmi diag -r 1 reports failures: "
                    + (" | ".join(failed)[:300] or f"exit {proc.returncode}"),
                    "read the full output of `dcgmi diag -r 1`; run -r 3 before putting the node back",
                    {"output": text[-4000:]},
                )
            ]
        )
    return ProbeResult(
        [Check("dcgm", "diag -r 1", OK, "dcgmi diag -r 1 passed", details={"output": text[-4000:]})]
    )
