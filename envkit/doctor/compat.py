"""Compatibility verdicts: what the driver, toolkit and framework builds need of each other.

Runs after the other probes, on their facts, and reads every rule from the
version matrix (`envkit/data/matrix.yaml`).
"""

from __future__ import annotations

import os
from typing import Any

from envkit.doctor.model import FAIL, NOT_APPLICABLE, OK, WARN, Check, ProbeResult
from envkit.matrix import Matrix, MatrixError, load_matrix, major_minor
from envkit.nvml import RELOAD_HINT


def _driver(facts: dict[str, Any]) -> str | None:
    return facts.get("gpu", {}).get("driver_version") or facts.get("driver", {}).get("kernel_driver_version")


def driver_check(name: str, what: str, cuda: str, driver: str | None, matrix: Matrix) -> Check:
    """A CUDA `cuda` build (`what`) on `driver`: ok, warn (minor-version compat) or fail."""
    if driver is None:
        return Check(
            "compat",
            name,
            NOT_APPLICABLE,
            f"{what} needs CUDA {cuda}, but there is no NVIDIA driver here to run it",
        )
    try:
        verdict, reason = matrix.driver_verdict(driver, cuda)
        req = matrix.driver_requirement(cuda)
    except MatrixError as exc:
        return Check(
            "compat", name, WARN, f"{what}: {exc}", "add the CUDA version to envkit/data/matrix.yaml"
        )
    details = {
        "driver": driver,
        "cuda": req.cuda,
        "minor_compat_floor": req.minor_compat_floor,
        "toolkit_driver": req.toolkit_driver,
    }
    if verdict == "fail":
        need = req.toolkit_driver or req.minor_compat_floor
        hint = f"install NVIDIA driver >= {need} (make provision), or a build for an older CUDA"
        return Check("compat", name, FAIL, f"{what}: {reason}", hint, details)
    if verdict == "warn":
        hint = f"upgrade the driver to >= {req.toolkit_driver} to run CUDA {req.cuda} without caveats"
        return Check("compat", name, WARN, f"{what}: {reason}", hint, details)
    return Check("compat", name, OK, f"{what}: {reason}", details=details)


def _pytorch_checks(fw: dict[str, Any], driver: str | None, matrix: Matrix) -> list[Check]:
    if not fw.get("version"):
        return []
    cuda = fw.get("cuda")
    if not cuda:
        return [Check("compat", "pytorch cuda", NOT_APPLICABLE, f"torch {fw['version']} is a CPU build")]
    checks = [driver_check("pytorch driver", f"torch {fw['version']} (CUDA {cuda})", cuda, driver, matrix)]
    mm = major_minor(fw["version"])
    builds = matrix.pytorch_cuda.get(mm)
    if builds is not None and major_minor(cuda) not in builds:
        checks.append(
            Check(
                "compat",
                "pytorch cuda",
                WARN,
                f"torch {mm} has no official CUDA {major_minor(cuda)} build (matrix: {', '.join(builds)})",
                "a custom or nightly build: prefer an official wheel from the matrix's index",
            )
        )
    return checks


def _tensorflow_checks(fw: dict[str, Any], driver: str | None, matrix: Matrix) -> list[Check]:
    if not fw.get("version"):
        return []
    cuda = fw.get("cuda")
    if not cuda:
        return [
            Check("compat", "tensorflow cuda", NOT_APPLICABLE, f"tensorflow {fw['version']} is a CPU build")
        ]
    checks = [
        driver_check("tensorflow driver", f"tensorflow {fw['version']} (CUDA {cuda})", cuda, driver, matrix)
    ]
    tested = matrix.tensorflow_cuda.get(major_minor(fw["version"]))
    if tested and major_minor(tested["cuda"]) != major_minor(cuda):
        checks.append(
            Check(
                "compat",
                "tensorflow cuda",
                WARN,
                f"tensorflow {fw['version']} was tested with CUDA {tested['cuda']}, this build has {cuda}",
                "use the pip 'tensorflow[and-cuda]' wheels for the tested CUDA/cuDNN",
            )
        )
    return checks


def _toolkit_checks(facts: dict[str, Any], driver: str | None, matrix: Matrix) -> list[Check]:
    nvcc = facts.get("cuda", {}).get("nvcc_version")
    if not nvcc:
        return []
    checks = []
    if driver is None:
        checks.append(
            Check(
                "compat",
                "toolkit driver",
                NOT_APPLICABLE,
                f"nvcc {nvcc} can compile here, but without an NVIDIA driver nothing it builds can run",
            )
        )
    else:
        checks.append(driver_check("toolkit driver", f"CUDA toolkit {nvcc}", nvcc, driver, matrix))
    torch_cuda = facts.get("pytorch", {}).get("cuda")
    if torch_cuda and major_minor(torch_cuda).split(".")[0] != nvcc.split(".")[0]:
        checks.append(
            Check(
                "compat",
                "toolkit pytorch",
                WARN,
                f"nvcc {nvcc} and torch's CUDA {torch_cuda} differ in major version",
                "torch.utils.cpp_extension refuses such builds: "
                "put a matching toolkit first on PATH/CUDA_HOME",
            )
        )
    return checks


def _driver_consistency(facts: dict[str, Any]) -> list[Check]:
    kernel = facts.get("driver", {}).get("kernel_driver_version")
    nvml = facts.get("gpu", {}).get("driver_version")
    if kernel and nvml and kernel != nvml:
        return [
            Check(
                "compat",
                "driver versions",
                FAIL,
                f"kernel module {kernel} but user-space library {nvml}",
                RELOAD_HINT,
            )
        ]
    return []


def _visibility_checks(facts: dict[str, Any]) -> list[Check]:
    """Does each CUDA framework build see every GPU NVML sees?"""
    nvml_count = facts.get("gpu", {}).get("gpu_count", 0)
    checks = []
    for name in ("pytorch", "tensorflow"):
        fw = facts.get(name, {})
        if not (nvml_count and fw.get("gpu_build")) or fw.get("gpus_seen", 0) >= nvml_count:
            continue
        mask = os.environ.get("CUDA_VISIBLE_DEVICES")
        if mask is not None:
            checks.append(
                Check(
                    "compat",
                    f"{name} gpus",
                    OK,
                    f"{name} sees {fw.get('gpus_seen', 0)} of {nvml_count} GPU(s) "
                    f"(CUDA_VISIBLE_DEVICES={mask})",
                )
            )
            continue
        checks.append(
            Check(
                "compat",
                f"{name} gpus",
                WARN,
                f"{name} sees {fw.get('gpus_seen', 0)} of the {nvml_count} GPU(s) NVML reports",
                "a GPU in MIG mode, in a bad state, or hidden by the container runtime "
                "(NVIDIA_VISIBLE_DEVICES); compare `nvidia-smi -L`",
            )
        )
    return checks


def compat_checks(facts: dict[str, Any], matrix: Matrix | None = None) -> ProbeResult:
    """All compatibility verdicts from the other probes' facts."""
    matrix = matrix or load_matrix()
    driver = _driver(facts)
    checks = _driver_consistency(facts)
    checks += _pytorch_checks(facts.get("pytorch", {}), driver, matrix)
    checks += _tensorflow_checks(facts.get("tensorflow", {}), driver, matrix)
    checks += _toolkit_checks(facts, driver, matrix)
    checks += _visibility_checks(facts)
    if not any(area in facts for area in ("driver", "gpu", "cuda", "pytorch", "tensorflow")):
        checks.append(
            Check(
                "compat",
                "inputs",
                NOT_APPLICABLE,
                "compat judges the facts of the driver, gpu, cuda, pytorch and tensorflow areas; none ran",
            )
        )
    return ProbeResult(checks, {"driver": driver})
