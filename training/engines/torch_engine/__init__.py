"""The PyTorch engine (imported only when a run selects engine=pytorch)."""

from training.engines.torch_engine.engine import TorchEngine

__all__ = ["TorchEngine"]
