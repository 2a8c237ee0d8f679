"""Engine registry: `engine` config key -> Engine class, imported only when asked for.

`pytorch` -> training.engines.torch_engine:TorchEngine
`tensorflow` -> training.engines.tf_engine:TFEngine
`auto` -> pytorch when torch is importable, else tensorflow.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from training.engines.base import EngineError

if TYPE_CHECKING:
    from training.engines.base import Engine

ENGINES: dict[str, tuple[str, str, str]] = {
    # name: (module, class, the package it needs)
    "pytorch": ("training.engines.torch_engine", "TorchEngine", "torch"),
    "tensorflow": ("training.engines.tf_engine", "TFEngine", "tensorflow"),
}


def available(name: str) -> bool:
    """True when the framework behind engine `name` can be imported."""
    return name in ENGINES and importlib.util.find_spec(ENGINES[name][2]) is not None


def resolve_engine_name(name: str) -> str:
    """'auto' -> the first importable engine; a named engine must be importable."""
    if name == "auto":
        for candidate in ("pytorch", "tensorflow"):
            if available(candidate):
                return candidate
        raise EngineError("no training framework is installed; pip install 'envkit[torch]' or 'envkit[tf]'")
    if name not in ENGINES:
        raise EngineError(f"engine={name!r} is unknown; choose one of {', '.join(ENGINES)} or auto")
    if not available(name):
        extra = "torch" if name == "pytorch" else "tf"
        raise EngineError(f"engine={name} needs {ENGINES[name][2]}; pip install 'envkit[{extra}]'")
    return name


def get_engine(name: str) -> type[Engine]:
    """The Engine class registered under `name` (or 'auto')."""
    resolved = resolve_engine_name(name)
    module_name, class_name, _ = ENGINES[resolved]
    module = importlib.import_module(module_name)
    return getattr(module, class_name)
