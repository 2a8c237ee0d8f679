"""Where a pretrained model comes from: a local directory, or a hub id (offline unless told otherwise).

A local directory is used as it is (it must hold `config.json`). A hub id
(`owner/name`) is looked up in the local Hugging Face cache only, unless the
user explicitly sets `HF_HUB_OFFLINE=0`: provisioned machines are often
air-gapped, and a run that silently downloads gigabytes is a surprise. Every
failure is one `PretrainedNotFound` line naming the input and how to get it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from training.core.config import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class PretrainedNotFound(ConfigError):
    """The pretrained model named by the config is not there (a user error: exit 2)."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved pretrained model: what `from_pretrained` is given, and whether it may download."""

    spec: str  # what the user wrote
    location: str  # a local directory, or the hub id
    local_files_only: bool

    @property
    def is_local_dir(self) -> bool:
        return Path(self.location).is_dir()


def hub_offline() -> bool:
    """True unless HF_HUB_OFFLINE is explicitly set to a false value (offline is the default here)."""
    value = os.environ.get("HF_HUB_OFFLINE", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def _how_to_get(spec: str) -> str:
    return (
        f"download it where the hub is reachable (`hf download {spec} --local-dir DIR`), copy DIR here "
        "and pass pretrained=DIR"
    )


def resolve_source(spec: str) -> ModelSource:
    """Resolve `pretrained=` to a local directory or a cached/downloadable hub id."""
    spec = spec.strip()
    if not spec:
        raise PretrainedNotFound("pretrained= is empty; give a model directory or a hub id (owner/name)")
    path = Path(spec).expanduser()
    # "./x", "/x", "~/x" or a/b/c can only be paths; "owner/name" may be either (directory first)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PretrainedNotFound(
                f"pretrained={spec}: the directory has no config.json, so it is not a Hugging Face model "
                "directory; point at the folder that holds config.json and model.safetensors"
            )
        return ModelSource(spec, str(path.resolve()), local_files_only=True)
    if path.exists():
        raise PretrainedNotFound(
            f"pretrained={spec} is a file; give the model's directory (with config.json)"
        )
    if looks_like_path or not _HUB_ID.match(spec):
        raise PretrainedNotFound(f"pretrained={spec}: no such directory; {_how_to_get('OWNER/NAME')}")
    offline = hub_offline()
    if offline and not _in_cache(spec):
        raise PretrainedNotFound(
            f"pretrained={spec}: not a local directory and not in the Hugging Face cache "
            f"(offline: HF_HUB_OFFLINE unset or 1); {_how_to_get(spec)}, or set HF_HUB_OFFLINE=0 where the "
            "hub is reachable"
        )
    return ModelSource(spec, spec, local_files_only=offline)


def _in_cache(repo_id: str) -> bool:
    """True when the local Hugging Face cache holds this repo's config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str) and Path(found).is_file()
