"""TensorFlow engine: Keras 3 GPT (model.py), PyTorch-rule AdamW (optim.py), engine (engine.py).

Importing this package imports TensorFlow; the registry in `training/engines/__init__.py`
does so only when `engine=tensorflow` is chosen.
"""

import os

# TensorFlow's C++ start-up notices (CPU features, oneDNN) would bury the training log;
# an explicit TF_CPP_MIN_LOG_LEVEL from the user still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training.engines.tf_engine.engine import TFEngine

__all__ = ["TFEngine"]
