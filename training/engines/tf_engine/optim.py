"""AdamW with PyTorch's exact update rule, and dynamic loss scaling for float16.

Keras' AdamW puts epsilon on the un-bias-corrected second moment, which is not
the rule the PyTorch engine trains with; the difference is small but it means
the two engines would not follow the same trajectory from the same weights. So
this module writes `torch.optim.AdamW`'s update in TensorFlow ops:

    p <- p * (1 - lr * wd)                      (decoupled decay; 0 for norms, biases, embeddings)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

The moment slots are plain variables created under the engine's distribution
strategy, so they are mirrored like the weights and saved by name.

Float16 loss scaling follows the algorithm of `keras.optimizers.LossScaleOptimizer`
(initial scale 2**15, halve and skip the step on a non-finite gradient, double
after 2000 finite steps) on the same variables, so it is checkpointed with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

INITIAL_LOSS_SCALE = 2.0**15
LOSS_SCALE_GROWTH_STEPS = 2000


class AdamW:
    """Decoupled-weight-decay Adam over a fixed list of variables."""

    def __init__(
        self,
        variables: Sequence[tf.Variable],
        names: Sequence[str],
        decay: Sequence[bool],
        weight_decay: float,
        beta1: float,
        beta2: float,
        eps: float,
    ) -> None:
        self.variables = list(variables)
        self.names = list(names)
        self.decay = list(decay)
        self.weight_decay, self.beta1, self.beta2, self.eps = weight_decay, beta1, beta2, eps
        self.lr = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="lr")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="adam_step")
        self.m = [
            tf.Variable(tf.zeros_like(v), trainable=False, name=f"m_{i}") for i, v in enumerate(variables)
        ]
        self.v = [
            tf.Variable(tf.zeros_like(v), trainable=False, name=f"v_{i}") for i, v in enumerate(variables)
        ]

    def apply(self, grads: Sequence[tf.Tensor]) -> None:
        """One update with `grads` (already averaged, clipped and finite)."""
        step = self.step.assign_add(1)
        t = tf.cast(step, tf.float32)
        lr = self.lr.read_value()
        bias1 = 1.0 - tf.pow(tf.constant(self.beta1, tf.float32), t)
        bias2_sqrt = tf.sqrt(1.0 - tf.pow(tf.constant(self.beta2, tf.float32), t))
        for var, grad, m, v, decays in zip(self.variables, grads, self.m, self.v, self.decay, strict=True):
            grad = tf.cast(grad, tf.float32)
            p = var.read_value()
            if decays and self.weight_decay:
                p = p * (1.0 - lr * self.weight_decay)
            m_new = m.assign(self.beta1 * m + (1.0 - self.beta1) * grad)
            v_new = v.assign(self.beta2 * v + (1.0 - self.beta2) * tf.square(grad))
            denom = tf.sqrt(v_new) / bias2_sqrt + self.eps
            var.assign(p - (lr / bias1) * m_new / denom)

    def state(self) -> dict[str, tf.Variable]:
        """Every optimizer variable under a stable name (for save/load)."""
        out: dict[str, tf.Variable] = {"step": self.step}
        for name, m, v in zip(self.names, self.m, self.v, strict=True):
            out[f"exp_avg/{name}"] = m
            out[f"exp_avg_sq/{name}"] = v
        return out


class DynamicLossScale:
    """Loss scale for float16 training; `scale` is 1 and fixed when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        initial = INITIAL_LOSS_SCALE if enabled else 1.0
        self.scale = tf.Variable(initial, dtype=tf.float32, trainable=False, name="loss_scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="loss_scale_good_steps")

    def update(self, finite: tf.Tensor) -> None:
        """After a step: grow after a run of finite steps, halve on overflow."""
        if not self.enabled:
            return
        grow = tf.logical_and(finite, self.good_steps + 1 >= LOSS_SCALE_GROWTH_STEPS)
        self.scale.assign(
            tf.where(grow, self.scale * 2.0, tf.where(finite, self.scale, tf.maximum(self.scale / 2.0, 1.0)))
        )
        self.good_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)), self.good_steps + 1, 0))

    def state(self) -> dict[str, tf.Variable]:
        return {"loss_scale": self.scale, "loss_scale_good_steps": self.good_steps}
