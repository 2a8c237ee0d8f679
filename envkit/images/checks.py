"""Prove a built image from the outside, through docker-py (Docker or Podman's socket).

`envkit images test NAME` runs these after building the image's `test` target
(doctor and a tiny bench inside the build). Each check returns what it saw, so
a failure names the evidence.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from envkit.matrix import ImageRow, version_tuple

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
    fw_ok = version_tuple(seen.get("framework", "0"))[:3] == version_tuple(row.version)[:3]
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

    cuda = run_in_image(client, tag, ["test", "-e", "/usr/local/cuda"], shm_size="1g").exit_code == 0
    want_cuda = row.cuda is not None
    checks.append(
        ImageCheck(
            "/usr/local/cuda present" if want_cuda else "no /usr/local/cuda in a CPU image",
            cuda == want_cuda,
            "present" if cuda else "absent",
        )
    )
    return checks
