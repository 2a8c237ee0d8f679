"""The classic first network, Y = relu(W X + b), trained by Adam in TensorFlow 2.

Most introductions write this for the TF1 API (`tf.placeholder`, `tf.Session`,
`sess.run(train_op, feed_dict=...)`), which TensorFlow 2 removed. The same
program today is eager Python: variables hold W and b, `tf.GradientTape`
records the forward pass, and `tf.function` traces the step into one graph,
which is what the old Session ran.

The target is itself a dense ReLU layer with known weights plus a little noise,
so the loss has a floor near the noise variance and a falling loss is proof
that W and b are learned.

Run: ``python -m training.examples.dense [--steps 300] [--every 25]``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DenseExample:
    """Problem size and training settings (defaults run in a second on a CPU)."""

    n_in: int = 8
    n_out: int = 4
    n_samples: int = 512
    batch_size: int = 64
    steps: int = 300
    learning_rate: float = 0.01
    noise: float = 0.05
    seed: int = 0


def make_data(cfg: DenseExample) -> tuple[np.ndarray, np.ndarray]:
    """Inputs X and targets Y = relu(X W* + b*) + noise, from a fixed seed."""
    rng = np.random.default_rng(cfg.seed)
    x = rng.normal(size=(cfg.n_samples, cfg.n_in)).astype(np.float32)
    w_true = rng.normal(size=(cfg.n_in, cfg.n_out)).astype(np.float32)
    b_true = rng.normal(size=(cfg.n_out,)).astype(np.float32)
    y = np.maximum(x @ w_true + b_true, 0.0) + cfg.noise * rng.normal(size=(cfg.n_samples, cfg.n_out))
    return x, y.astype(np.float32)


def train_dense(
    cfg: DenseExample = DenseExample(), every: int = 25, echo: bool = True
) -> list[tuple[int, float]]:
    """Train W and b with Adam on mean squared error; return (step, loss) every `every` steps."""
    import tensorflow as tf

    tf.random.set_seed(cfg.seed)
    x_all, y_all = make_data(cfg)
    # Rows of X are samples, so the layer is X @ W + b (the transpose of W X + b).
    w = tf.Variable(tf.random.normal([cfg.n_in, cfg.n_out], stddev=0.1), name="W")
    b = tf.Variable(tf.zeros([cfg.n_out]), name="b")
    optimizer = tf.keras.optimizers.Adam(learning_rate=cfg.learning_rate)

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            y_hat = tf.nn.relu(tf.matmul(x, w) + b)
            loss = tf.reduce_mean(tf.square(y_hat - y))
        grads = tape.gradient(loss, [w, b])
        optimizer.apply_gradients(zip(grads, [w, b], strict=True))
        return loss

    dataset = (
        tf.data.Dataset.from_tensor_slices((x_all, y_all))
        .shuffle(cfg.n_samples, seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size, drop_remainder=True)
        .repeat()
    )
    history: list[tuple[int, float]] = []
    for step, (x, y) in enumerate(dataset.take(cfg.steps), start=1):
        loss = float(train_step(x, y))
        if step == 1 or step % every == 0 or step == cfg.steps:
            history.append((step, loss))
            if echo:
                print(f"step {step:4d}  loss {loss:.4f}", flush=True)
    return history


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: train and print the falling loss."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep the loss lines readable
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DenseExample.steps)
    parser.add_argument("--every", type=int, default=25, help="print the loss every N steps")
    parser.add_argument("--lr", type=float, default=DenseExample.learning_rate)
    parser.add_argument("--seed", type=int, default=DenseExample.seed)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        parser.error("--steps and --every must be positive integers")
    history = train_dense(
        DenseExample(steps=args.steps, learning_rate=args.lr, seed=args.seed), every=args.every
    )
    first, last = history[0][1], history[-1][1]
    print(f"loss {first:.4f} -> {last:.4f} in {args.steps} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
