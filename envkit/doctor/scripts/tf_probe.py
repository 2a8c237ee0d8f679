"""TensorFlow probe, run by `envkit doctor` in its own interpreter with a timeout.

Stand-alone (no envkit import). Prints one line `ENVKIT_PROBE_JSON {...}`;
TensorFlow's own library-loading messages go to stderr, which doctor reads.
"""

import importlib.machinery
import json
import os
import sys

MARK = "ENVKIT_PROBE_JSON "
# `import tensorflow` eagerly imports Keras, and Keras imports matplotlib: about
# a second of CPU that says nothing about the TF runtime (build, devices,
# kernels). Doctor reports Keras from its package metadata instead.
SKIPPED = ("keras", "tf_keras", "matplotlib")


class _NotLoaded:
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(f"{module.__name__} is not loaded by the doctor probe")


class _SkipImports:
    """Lets TF find the packages (it reads their paths) but not import them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in SKIPPED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = _NotLoaded()
        return spec


def emit(out):
    sys.stdout.write(MARK + json.dumps(out) + "\n")
    sys.stdout.flush()


def main():
    out = {"framework": "tensorflow"}
    # TF grabs nearly all GPU memory by default; the PyTorch probe shares the GPU
    # at the same moment and needs room for its own CUDA context.
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    sys.meta_path.insert(0, _SkipImports())
    try:
        import numpy as np
        import tensorflow as tf
    except Exception as exc:
        out["import_error"] = f"{type(exc).__name__}: {exc}"
        emit(out)
        return
    out["version"] = tf.__version__
    info = dict(tf.sysconfig.get_build_info())
    out["build_info"] = {
        k: (v if isinstance(v, (str, int, float, bool)) else str(v)) for k, v in info.items()
    }
    out["is_cuda_build"] = bool(info.get("is_cuda_build"))
    out["cuda"] = info.get("cuda_version")
    out["cudnn"] = info.get("cudnn_version")
    out["cuda_compute_capabilities"] = info.get("cuda_compute_capabilities")

    devices = []
    for dev in tf.config.list_physical_devices():
        entry = {"device": dev.name, "type": dev.device_type}
        if dev.device_type == "GPU":
            try:
                details = tf.config.experimental.get_device_details(dev)
                entry["name"] = details.get("device_name")
                cap = details.get("compute_capability")
                entry["capability"] = f"{cap[0]}.{cap[1]}" if cap else None
            except Exception as exc:
                entry["error"] = str(exc)
        devices.append(entry)
    out["devices"] = devices

    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 256)).astype(np.float32)
    b = rng.standard_normal((256, 256)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    # Full fp32 on the GPU: TF32 would differ from the CPU result by design.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    matmuls = []
    for dev in tf.config.list_logical_devices():
        if dev.device_type not in ("CPU", "GPU"):
            continue
        try:
            with tf.device(dev.name):
                got = tf.linalg.matmul(tf.constant(a), tf.constant(b)).numpy().astype(np.float64)
            err = float(np.abs(got - ref).max() / np.abs(ref).max())
            matmuls.append({"device": dev.name, "max_rel_err": err, "ok": err < 1e-4})
        except Exception as exc:
            matmuls.append({"device": dev.name, "error": f"{type(exc).__name__}: {exc}", "ok": False})
    out["matmul"] = matmuls
    emit(out)


if __name__ == "__main__":
    main()
