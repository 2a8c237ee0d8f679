"""PyTorch probe, run by `envkit doctor` in its own interpreter with a timeout.

Stand-alone on purpose (no envkit import): a hung CUDA init or a crashing
extension must take down only this process. Prints one line
`ENVKIT_PROBE_JSON {...}` on stdout.
"""

import json
import sys

MARK = "ENVKIT_PROBE_JSON "


def emit(out):
    sys.stdout.write(MARK + json.dumps(out) + "\n")
    sys.stdout.flush()


def cudnn_version(code):
    """cuDNN's integer version: 91002 -> '9.10.2' (9.x: M*10000), 8902 -> '8.9.2' (8.x: M*1000)."""
    if not code:
        return None
    if code >= 90000:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"


def matmul_check(torch, device, a, b, ref):
    """Max relative error of a @ b on `device` against the float64 CPU product."""
    try:
        got = (a.to(device) @ b.to(device)).to("cpu", torch.float64)
        if device != "cpu":
            torch.cuda.synchronize(device)
        err = float(((got - ref).abs().max() / ref.abs().max()).item())
        return {"device": str(device), "max_rel_err": err, "ok": err < 1e-4}
    except Exception as exc:
        return {"device": str(device), "error": f"{type(exc).__name__}: {exc}", "ok": False}


def main():
    out = {"framework": "pytorch"}
    try:
        import torch
    except Exception as exc:  # ImportError, or OSError from a broken shared library
        out["import_error"] = f"{type(exc).__name__}: {exc}"
        emit(out)
        return
    out["version"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["hip"] = getattr(torch.version, "hip", None)
    out["arch_list"] = torch.cuda.get_arch_list()
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    out["threads"] = torch.get_num_threads()
    out["cudnn"] = cudnn_version(torch.backends.cudnn.version()) if out["cuda"] else None
    try:
        nccl = torch.cuda.nccl.version() if out["cuda"] else None
        out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    except Exception:
        out["nccl"] = None

    # Full fp32 on the GPU: TF32 would differ from the CPU result by design.
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=gen)
    b = torch.randn(256, 256, generator=gen)
    ref = a.double() @ b.double()
    devices = [{"device": "cpu", "name": out["cpu_capability"]}]
    matmuls = [matmul_check(torch, "cpu", a, b, ref)]

    out["cuda_available"] = bool(out["cuda"] or out["hip"]) and torch.cuda.is_available()
    if out["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cap = torch.cuda.get_device_capability(i)
            devices.append(
                {
                    "device": f"cuda:{i}",
                    "name": props.name,
                    "capability": f"{cap[0]}.{cap[1]}",
                    "memory_bytes": int(props.total_memory),
                }
            )
            matmuls.append(matmul_check(torch, f"cuda:{i}", a, b, ref))
    out["devices"] = devices
    out["matmul"] = matmuls
    emit(out)


if __name__ == "__main__":
    main()
