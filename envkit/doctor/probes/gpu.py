"""NVML probe: driver, CUDA driver API, and each GPU's health through nvidia-ml-py."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from envkit.doctor.model import FAIL, NOT_APPLICABLE, NOT_PRESENT, OK, WARN, Check, ProbeResult
from envkit.doctor.options import DoctorOptions, gpu_expected
from envkit.nvml import (
    NvmlUnavailable,
    clock_evidence,
    clock_state,
    decode_throttle_reasons,
    is_problem,
    nvml_session,
    optional,
    problem_reasons,
    throttle_mask,
)

MIB = 2**20
# Below this share of the default power limit, someone capped the board.
POWER_CAP_RATIO = 0.9
GPU_IDLE_BIT = 0x1


@dataclass
class GpuInfo:
    """Everything doctor reads about one GPU (None: not supported on it)."""

    index: int
    name: str
    uuid: str | None
    memory_total: int | None
    memory_used: int | None
    compute_capability: str | None
    persistence_mode: int | None
    ecc_mode: list[int] | None
    ecc_uncorrected_volatile: int | None
    ecc_uncorrected_aggregate: int | None
    retired_pages: int | None
    retired_pages_pending: int | None
    remapped_rows: list[int] | None  # corrected, uncorrected, pending, failure
    pcie_gen: int | None
    pcie_gen_max: int | None
    pcie_width: int | None
    pcie_width_max: int | None
    sm_clock_mhz: int | None
    max_sm_clock_mhz: int | None
    throttle_mask: int | None
    power_w: float | None
    power_limit_w: float | None
    default_power_limit_w: float | None
    temperature_c: int | None
    mig_mode: list[int] | None


def cuda_version_from_int(value: int) -> str:
    """NVML's 12040 -> '12.4'."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _watts(mw: int | None) -> float | None:
    return None if mw is None else round(mw / 1000.0, 1)


def read_gpu(nvml: Any, index: int) -> GpuInfo:
    """Query one GPU; unsupported fields come back as None."""
    h = nvml.nvmlDeviceGetHandleByIndex(index)
    mem = optional(nvml, "nvmlDeviceGetMemoryInfo", h)
    cc = optional(nvml, "nvmlDeviceGetCudaComputeCapability", h)
    ecc = optional(nvml, "nvmlDeviceGetEccMode", h)
    unc = nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    retired = None
    pages_sbe = optional(
        nvml, "nvmlDeviceGetRetiredPages", h, nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
    )
    pages_dbe = optional(
        nvml, "nvmlDeviceGetRetiredPages", h, nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
    )
    if pages_sbe is not None or pages_dbe is not None:
        retired = len(pages_sbe or []) + len(pages_dbe or [])
    remapped = optional(nvml, "nvmlDeviceGetRemappedRows", h)
    return GpuInfo(
        index=index,
        name=str(nvml.nvmlDeviceGetName(h)),
        uuid=optional(nvml, "nvmlDeviceGetUUID", h),
        memory_total=int(mem.total) if mem is not None else None,
        memory_used=int(mem.used) if mem is not None else None,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        persistence_mode=optional(nvml, "nvmlDeviceGetPersistenceMode", h),
        ecc_mode=list(ecc) if ecc is not None else None,
        ecc_uncorrected_volatile=optional(
            nvml, "nvmlDeviceGetTotalEccErrors", h, unc, nvml.NVML_VOLATILE_ECC
        ),
        ecc_uncorrected_aggregate=optional(
            nvml, "nvmlDeviceGetTotalEccErrors", h, unc, nvml.NVML_AGGREGATE_ECC
        ),
        retired_pages=retired,
        retired_pages_pending=optional(nvml, "nvmlDeviceGetRetiredPagesPendingStatus", h),
        remapped_rows=list(remapped) if remapped is not None else None,
        pcie_gen=optional(nvml, "nvmlDeviceGetCurrPcieLinkGeneration", h),
        pcie_gen_max=optional(nvml, "nvmlDeviceGetMaxPcieLinkGeneration", h),
        pcie_width=optional(nvml, "nvmlDeviceGetCurrPcieLinkWidth", h),
        pcie_width_max=optional(nvml, "nvmlDeviceGetMaxPcieLinkWidth", h),
        sm_clock_mhz=optional(nvml, "nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_SM),
        max_sm_clock_mhz=optional(nvml, "nvmlDeviceGetMaxClockInfo", h, nvml.NVML_CLOCK_SM),
        throttle_mask=throttle_mask(nvml, h),
        power_w=_watts(optional(nvml, "nvmlDeviceGetPowerUsage", h)),
        power_limit_w=_watts(optional(nvml, "nvmlDeviceGetEnforcedPowerLimit", h)),
        default_power_limit_w=_watts(optional(nvml, "nvmlDeviceGetPowerManagementDefaultLimit", h)),
        temperature_c=optional(nvml, "nvmlDeviceGetTemperature", h, nvml.NVML_TEMPERATURE_GPU),
        mig_mode=list(optional(nvml, "nvmlDeviceGetMigMode", h) or []) or None,
    )


# --- judging one GPU -----------------------------------------------------------


def identity_check(g: GpuInfo) -> Check:
    mem = f"{g.memory_total / MIB:.0f} MiB" if g.memory_total is not None else "memory unknown"
    parts = [g.name, f"sm_{(g.compute_capability or '?').replace('.', '')}", mem]
    if g.temperature_c is not None:
        parts.append(f"{g.temperature_c} C")
    hint = ""
    if g.persistence_mode == 0:
        parts.append("persistence off")
        hint = "enable persistence (nvidia-persistenced, or nvidia-smi -pm 1) so CUDA init stays fast"
    else:
        parts.append("persistence on" if g.persistence_mode else "persistence n/a")
    return Check("gpu", f"gpu{g.index}", OK, ", ".join(parts), hint, asdict(g))


def ecc_check(g: GpuInfo) -> Check:
    name = f"gpu{g.index} ecc"
    details = {
        "ecc_mode": g.ecc_mode,
        "uncorrected_volatile": g.ecc_uncorrected_volatile,
        "uncorrected_aggregate": g.ecc_uncorrected_aggregate,
        "retired_pages": g.retired_pages,
        "retired_pages_pending": g.retired_pages_pending,
        "remapped_rows": g.remapped_rows,
    }
    if g.ecc_mode is None:
        return Check("gpu", name, NOT_APPLICABLE, "ECC not supported on this GPU", details=details)
    problems: list[tuple[str, str, str]] = []  # status, evidence, hint
    if not g.ecc_mode[0]:
        problems.append((WARN, "ECC is disabled", "enable it: sudo nvidia-smi -i N -e 1, then reboot"))
    if len(g.ecc_mode) > 1 and g.ecc_mode[0] != g.ecc_mode[1]:
        problems.append((WARN, "ECC mode change pending", "reboot or reset the GPU to apply it"))
    drain = "drain this GPU, check `dmesg` for Xid 48/63/64/94/95, reset it; RMA if errors recur"
    if g.ecc_uncorrected_volatile:
        problems.append((FAIL, f"{g.ecc_uncorrected_volatile} uncorrectable ECC error(s) since boot", drain))
    elif g.ecc_uncorrected_aggregate:
        problems.append(
            (
                WARN,
                f"{g.ecc_uncorrected_aggregate} uncorrectable ECC error(s) in the GPU's lifetime",
                "none since boot; watch for new ones",
            )
        )
    if g.remapped_rows is not None:
        corr, unc, pending, failure = g.remapped_rows
        if failure:
            problems.append((FAIL, "row remapping FAILED", "the GPU has run out of spare rows: RMA it"))
        if pending:
            problems.append(
                (WARN, "a row remap is pending", "reset the GPU (nvidia-smi -r) or reboot to apply it")
            )
        if corr or unc:
            problems.append((OK, f"{corr + unc} row(s) remapped ({unc} for uncorrectable errors)", ""))
    if g.retired_pages:
        problems.append((WARN, f"{g.retired_pages} page(s) retired", "RMA when near 60 retired pages"))
    if g.retired_pages_pending:
        problems.append((WARN, "page retirement pending", "reboot to retire the pending pages"))
    return _combine(name, problems, "ECC on, no uncorrectable errors, no row remapping pending", details)


def pcie_check(g: GpuInfo) -> Check:
    name = f"gpu{g.index} pcie"
    details = {
        "gen": g.pcie_gen,
        "gen_max": g.pcie_gen_max,
        "width": g.pcie_width,
        "width_max": g.pcie_width_max,
    }
    if None in (g.pcie_gen, g.pcie_gen_max, g.pcie_width, g.pcie_width_max):
        return Check("gpu", name, NOT_APPLICABLE, "PCIe link not reported", details=details)
    link = f"Gen{g.pcie_gen} x{g.pcie_width} (max Gen{g.pcie_gen_max} x{g.pcie_width_max})"
    idle = g.throttle_mask is not None and bool(g.throttle_mask & GPU_IDLE_BIT)
    if g.pcie_width < g.pcie_width_max:
        return Check(
            "gpu",
            name,
            WARN,
            f"link trained down: {link}",
            "reseat the card or riser, check the slot's lanes and BIOS bifurcation; "
            "host<->GPU copies run at a fraction of their speed",
            details,
        )
    if g.pcie_gen < g.pcie_gen_max:
        if idle:
            return Check(
                "gpu",
                name,
                OK,
                f"{link}; an idle GPU lowers its link generation to save power",
                "check again under load",
                details,
            )
        return Check(
            "gpu",
            name,
            WARN,
            f"link below its generation under load: {link}",
            "check BIOS PCIe speed settings and the riser; reseat the card",
            details,
        )
    return Check("gpu", name, OK, link, details=details)


def clocks_check(g: GpuInfo) -> Check:
    name = f"gpu{g.index} clocks"
    reasons = decode_throttle_reasons(g.throttle_mask) if g.throttle_mask is not None else []
    details = {
        "sm_clock_mhz": g.sm_clock_mhz,
        "max_sm_clock_mhz": g.max_sm_clock_mhz,
        "throttle_mask": g.throttle_mask,
        "throttle_reasons": reasons,
        "power_w": g.power_w,
        "power_limit_w": g.power_limit_w,
        "default_power_limit_w": g.default_power_limit_w,
        "temperature_c": g.temperature_c,
    }
    state = clock_state(g.throttle_mask, g.power_w, g.power_limit_w)
    evidence = clock_evidence(g.sm_clock_mhz, g.max_sm_clock_mhz, g.power_w, g.power_limit_w)
    details["state"] = state
    problems: list[tuple[str, str, str]] = []
    # Only fault reasons warn: SwPowerCap on a busy GPU at its limit is how it is meant to run.
    if g.throttle_mask is not None and is_problem(g.throttle_mask):
        cooling = "check cooling: fans, airflow, inlet temperature (nvidia-smi -q -d TEMPERATURE,PERFORMANCE)"
        brake = (
            "the board's power brake was asserted (an external power-supply signal): "
            "check the PSU and its cabling (nvidia-smi -q -d PERFORMANCE)"
        )
        # HW slowdown alone is either heat or the power brake; nvml.h does not say which
        braked = "hw_power_brake_slowdown" in reasons
        hot = any("thermal" in r for r in reasons) or not braked
        fix = "; ".join(f for f, wanted in ((cooling, hot), (brake, braked)) if wanted)
        temp = f", {g.temperature_c} C" if g.temperature_c is not None else ""
        expected = [r for r in reasons if r not in problem_reasons(g.throttle_mask)]
        also = f" (also {', '.join(expected)}, expected)" if expected else ""
        problems.append((WARN, f"{state}{also}: {evidence}{temp}", fix))
    if (
        g.power_limit_w
        and g.default_power_limit_w
        and g.power_limit_w < POWER_CAP_RATIO * g.default_power_limit_w
    ):
        problems.append(
            (
                WARN,
                f"power limit {g.power_limit_w:.0f} W is below the default {g.default_power_limit_w:.0f} W",
                f"restore it: sudo nvidia-smi -i {g.index} -pl {g.default_power_limit_w:.0f}",
            )
        )
    ok_text = f"{evidence}; {state}"
    return _combine(name, problems, ok_text, details)


def mig_check(g: GpuInfo) -> Check:
    name = f"gpu{g.index} mig"
    if not g.mig_mode:
        return Check("gpu", name, NOT_APPLICABLE, "MIG not supported on this GPU")
    current, pending = g.mig_mode[0], g.mig_mode[-1]
    details = {"current": current, "pending": pending}
    if current != pending:
        return Check(
            "gpu",
            name,
            WARN,
            f"MIG mode change pending ({'on' if current else 'off'} -> {'on' if pending else 'off'})",
            f"reset the GPU to apply it: sudo nvidia-smi -i {g.index} -r",
            details,
        )
    if current:
        return Check(
            "gpu",
            name,
            WARN,
            "MIG enabled: CUDA sees MIG instances (nvidia-smi -L), not the whole GPU",
            "whole-GPU benchmarks and multi-GPU training need MIG off: "
            f"sudo nvidia-smi -i {g.index} -mig 0; otherwise pick an instance with "
            "CUDA_VISIBLE_DEVICES=MIG-<uuid>",
            details,
        )
    return Check("gpu", name, OK, "MIG disabled (whole GPU)", details=details)


_RANK = {OK: 0, NOT_APPLICABLE: 0, WARN: 1, FAIL: 2}


def _combine(name: str, problems: list[tuple[str, str, str]], ok_text: str, details: dict) -> Check:
    """Fold several findings into one check: the worst status, every piece of evidence."""
    bad = [p for p in problems if p[0] != OK]
    if not bad:
        evidence = "; ".join([ok_text, *(p[1] for p in problems)]) if problems else ok_text
        return Check("gpu", name, OK, evidence, details=details)
    worst = max(bad, key=lambda p: _RANK[p[0]])[0]
    evidence = "; ".join(p[1] for p in problems)
    hint = "; ".join(dict.fromkeys(p[2] for p in bad if p[2]))
    return Check("gpu", name, worst, evidence, hint, details)


def gpu_checks(g: GpuInfo) -> list[Check]:
    return [identity_check(g), ecc_check(g), pcie_check(g), clocks_check(g), mig_check(g)]


# --- the probe ---------------------------------------------------------------


def probe_gpu(opts: DoctorOptions) -> ProbeResult:
    """NVML: driver versions, every GPU's health, and --require-gpu."""
    expected = gpu_expected(opts)
    checks: list[Check] = []
    facts: dict[str, Any] = {"gpu_count": 0, "gpus": [], "nvml_status": None}
    try:
        with nvml_session(opts.nvml) as nvml:
            try:
                driver = str(nvml.nvmlSystemGetDriverVersion())
                cuda_int = optional(nvml, "nvmlSystemGetCudaDriverVersion")
                cuda = cuda_version_from_int(int(cuda_int)) if cuda_int else None
                count = int(nvml.nvmlDeviceGetCount())
                gpus = [read_gpu(nvml, i) for i in range(count)]
            except nvml.NVMLError as exc:  # a GPU lost mid-query, a mismatch seen late
                raise NvmlUnavailable.from_nvml_error(exc) from None
    except NvmlUnavailable as exc:
        status = exc.status
        if status == FAIL and exc.code == 9 and not expected:
            status = WARN  # a leftover libnvidia-ml without GPU or module: odd, but not broken
        hint = exc.hint
        if status == NOT_PRESENT and expected:
            hint = "a GPU is expected here but NVML is missing: install the NVIDIA driver (make provision)"
        checks.append(Check("gpu", "nvml", status, exc.message, hint, {"nvml_error_code": exc.code}))
        facts["nvml_status"] = status
        checks.extend(_require(opts, 0, exc.message))
        return ProbeResult(checks, facts)

    facts.update(
        nvml_status=OK,
        driver_version=driver,
        cuda_driver_version=cuda,
        gpu_count=count,
        gpus=[{"index": g.index, "name": g.name, "uuid": g.uuid, "cc": g.compute_capability} for g in gpus],
    )
    names = sorted({g.name for g in gpus})
    checks.append(
        Check(
            "gpu",
            "nvml",
            OK if count else WARN,
            f"driver {driver}, CUDA driver API {cuda or '?'}, {count} GPU(s)"
            + (f": {', '.join(names)}" if names else ""),
            "" if count else "NVML sees no GPU: check CUDA_VISIBLE_DEVICES/--gpus and `nvidia-smi -L`",
            {"driver_version": driver, "cuda_driver_version": cuda, "gpu_count": count},
        )
    )
    for g in gpus:
        checks.extend(gpu_checks(g))
    checks.extend(_require(opts, count, ""))
    return ProbeResult(checks, facts)


def _require(opts: DoctorOptions, count: int, why: str) -> list[Check]:
    if not opts.require_gpu:
        return []
    if count:
        return [Check("gpu", "required gpu", OK, f"{count} GPU(s) visible, as --require-gpu asks")]
    return [
        Check(
            "gpu",
            "required gpu",
            FAIL,
            "--require-gpu: no GPU is visible" + (f" ({why})" if why else ""),
            "install the driver (make provision) or run the container with --gpus all",
        )
    ]
