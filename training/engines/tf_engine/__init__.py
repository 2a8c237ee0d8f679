"""TensorFlow engine: Keras 3 GPT (model.py), PyTorch-rule AdamW (optim.py), engine (engine.py).

Importing this package imports TensorFlow, quietly (quiet.py); the registry in
`training/engines/__init__.py` does so only when `engine=tensorflow` is chosen.
"""

from training.engines.tf_quiet import configure_env, quiet_startup

configure_env()
with quiet_startup():
    import tensorflow  # noqa: F401  (first import: its C++ start-up notices stay off the terminal)

from training.engines.tf_engine.engine import TFEngine  # noqa: E402

__all__ = ["TFEngine"]
