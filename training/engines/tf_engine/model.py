"""The GPT decoder and classification head in Keras 3 on TensorFlow, with the contract's math.

Same model as the PyTorch engine, layer for layer: token + learned position
embeddings, pre-LayerNorm blocks (fused qkv causal attention, tanh-GELU MLP),
final LayerNorm, LM head tied to the token embedding, and a classifier on the
masked mean of the final hidden states. `export_weights`/`import_weights` speak
the checkpoint names of the contract (PyTorch layout: Linear weight [out, in]),
so the two engines share weights.

Dropout is stateless: every site draws its mask from a seed passed into `call`
(the engine folds in the step and replica), so resuming at a step reproduces
the same masks without any hidden RNG state to save.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

LN_EPS = 1e-5
INIT_STD = 0.02


class GPTShape(Protocol):
    """The fields of `training.core.config.ModelConfig` this model reads."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool
    n_classes: int


class _SeededNormal:
    """normal(0, std) initializers with consecutive integer seeds: the same seed builds the same model."""

    def __init__(self, seed: int) -> None:
        self.next_seed = seed

    def __call__(self, std: float) -> keras.initializers.Initializer:
        self.next_seed += 1
        return keras.initializers.RandomNormal(mean=0.0, stddev=std, seed=self.next_seed)


def _dropout(x: tf.Tensor, rate: float, seed: tf.Tensor | None, site: int, training: bool) -> tf.Tensor:
    """Inverted dropout whose mask is a pure function of (seed, site)."""
    if not training or rate <= 0.0:
        return x
    if seed is None:
        raise ValueError("training with dropout > 0 needs a dropout_seed (shape [2], int32/int64)")
    site_seed = tf.random.experimental.stateless_fold_in(seed, site)
    return tf.nn.experimental.stateless_dropout(x, rate=rate, seed=site_seed)


class CausalSelfAttention(keras.layers.Layer):
    """Fused qkv projection, causal softmax attention scaled by 1/sqrt(head_dim), output projection."""

    def __init__(self, cfg: GPTShape, init: _SeededNormal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        # Residual projections get the GPT-2 scaled init so the residual stream's
        # variance does not grow with depth.
        proj_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        self.c_attn = keras.layers.Dense(
            3 * cfg.n_embd, use_bias=cfg.bias, kernel_initializer=init(INIT_STD), name="c_attn"
        )
        self.c_proj = keras.layers.Dense(
            cfg.n_embd, use_bias=cfg.bias, kernel_initializer=init(proj_std), name="c_proj"
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        channels = self.n_head * self.head_dim
        qkv = self.c_attn(x)
        q, k, v = tf.split(qkv, 3, axis=-1)

        def heads(t: tf.Tensor) -> tf.Tensor:  # [B, T, C] -> [B, H, T, D]
            return tf.transpose(tf.reshape(t, [batch, seq, self.n_head, self.head_dim]), [0, 2, 1, 3])

        q, k, v = heads(q), heads(k), heads(v)
        scores = tf.matmul(q, k, transpose_b=True) * tf.cast(1.0 / math.sqrt(self.head_dim), q.dtype)
        # Softmax in float32 even under a half-precision policy: the max-subtraction
        # and the -inf mask are where bf16/fp16 lose accuracy.
        scores = tf.cast(scores, tf.float32)
        causal = tf.linalg.band_part(tf.ones([seq, seq], tf.bool), -1, 0)
        scores = tf.where(causal, scores, tf.constant(-1e30, tf.float32))
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype)
        y = tf.matmul(probs, v)
        y = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [batch, seq, channels])
        return self.c_proj(y)


class MLP(keras.layers.Layer):
    """n_embd -> 4*n_embd -> GELU(tanh) -> n_embd."""

    def __init__(self, cfg: GPTShape, init: _SeededNormal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        proj_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        self.c_fc = keras.layers.Dense(
            4 * cfg.n_embd, use_bias=cfg.bias, kernel_initializer=init(INIT_STD), name="c_fc"
        )
        self.c_proj = keras.layers.Dense(
            cfg.n_embd, use_bias=cfg.bias, kernel_initializer=init(proj_std), name="c_proj"
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.c_proj(tf.nn.gelu(self.c_fc(x), approximate=True))


class Block(keras.layers.Layer):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTShape, index: int, init: _SeededNormal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.rate = cfg.dropout
        self.ln_1 = keras.layers.LayerNormalization(epsilon=LN_EPS, center=cfg.bias, name="ln_1")
        self.attn = CausalSelfAttention(cfg, init, name="attn")
        self.ln_2 = keras.layers.LayerNormalization(epsilon=LN_EPS, center=cfg.bias, name="ln_2")
        self.mlp = MLP(cfg, init, name="mlp")

    def call(self, x: tf.Tensor, training: bool = False, dropout_seed: tf.Tensor | None = None) -> tf.Tensor:
        site = 1 + 2 * self.index  # site 0 is the embedding dropout
        x = x + _dropout(self.attn(self.ln_1(x)), self.rate, dropout_seed, site, training)
        return x + _dropout(self.mlp(self.ln_2(x)), self.rate, dropout_seed, site + 1, training)


class GPT(keras.Model):
    """Decoder backbone; `call` returns the ln_f hidden states, heads are methods.

    `with_classifier=True` adds `cls_head` (n_embd -> n_classes) for fine-tuning;
    `seed` fixes the initial weights (each initializer gets its own derived seed).
    """

    def __init__(self, cfg: GPTShape, with_classifier: bool = False, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        init = _SeededNormal(seed * 1000)
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
        self.cfg = cfg
        self.wte = keras.layers.Embedding(
            cfg.vocab_size, cfg.n_embd, embeddings_initializer=init(INIT_STD), name="wte"
        )
        self.wpe = keras.layers.Embedding(
            cfg.block_size, cfg.n_embd, embeddings_initializer=init(INIT_STD), name="wpe"
        )
        self.h = [Block(cfg, i, init, name=f"h_{i}") for i in range(cfg.n_layer)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=LN_EPS, center=cfg.bias, name="ln_f")
        self.cls_head = (
            keras.layers.Dense(cfg.n_classes, kernel_initializer=init(INIT_STD), name="cls_head")
            if with_classifier
            else None
        )

    def build(self, input_shape: Any = None) -> None:
        """Create every variable up front, so none is created inside a traced step."""
        n_embd = self.cfg.n_embd
        self.wte.build()
        self.wpe.build()
        for block in self.h:
            for layer, width in (
                (block.ln_1, n_embd),
                (block.attn.c_attn, n_embd),
                (block.attn.c_proj, n_embd),
                (block.ln_2, n_embd),
                (block.mlp.c_fc, n_embd),
                (block.mlp.c_proj, 4 * n_embd),
            ):
                layer.build((None, None, width))
            block.attn.built = block.mlp.built = block.built = True
        self.ln_f.build((None, None, n_embd))
        if self.cls_head is not None:
            self.cls_head.build((None, n_embd))
        self.built = True

    def build_all(self) -> GPT:
        """Build now and return self (for `GPT(cfg).build_all()`)."""
        self.build()
        return self

    def call(
        self, ids: tf.Tensor, training: bool = False, dropout_seed: tf.Tensor | None = None
    ) -> tf.Tensor:
        seq = tf.shape(ids)[1]
        x = self.wte(ids) + self.wpe(tf.range(seq))[tf.newaxis]
        x = _dropout(x, self.cfg.dropout, dropout_seed, 0, training)
        for block in self.h:
            x = block(x, training=training, dropout_seed=dropout_seed)
        return self.ln_f(x)

    def lm_logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """Logits tied to the token embedding (h @ wte^T), returned in float32."""
        table = tf.cast(self.wte.embeddings, hidden.dtype)
        return tf.cast(tf.matmul(hidden, table, transpose_b=True), tf.float32)

    def cls_logits(self, hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """Classifier logits on the mean of hidden states where `mask` is true (non-padding)."""
        if self.cls_head is None:
            raise ValueError("this model has no classification head (build it with with_classifier=True)")
        hidden = tf.cast(hidden, tf.float32)
        weights = tf.cast(mask, tf.float32)[..., tf.newaxis]
        count = tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
        pooled = tf.reduce_sum(hidden * weights, axis=1) / count
        return tf.cast(self.cls_head(tf.cast(pooled, self.compute_dtype)), tf.float32)


# --- weights in the contract's names -------------------------------------------------------------


def _named_variables(model: GPT) -> dict[str, tuple[keras.Variable, bool]]:
    """Checkpoint name -> (variable, stored transposed) for every weight the model holds."""
    names: dict[str, tuple[keras.Variable, bool]] = {
        "wte.weight": (model.wte.embeddings, False),
        "wpe.weight": (model.wpe.embeddings, False),
    }

    def norm(prefix: str, layer: keras.layers.LayerNormalization) -> None:
        names[f"{prefix}.weight"] = (layer.gamma, False)
        if layer.beta is not None:
            names[f"{prefix}.bias"] = (layer.beta, False)

    def dense(prefix: str, layer: keras.layers.Dense) -> None:
        names[f"{prefix}.weight"] = (layer.kernel, True)  # Keras [in, out] vs PyTorch [out, in]
        if layer.bias is not None:
            names[f"{prefix}.bias"] = (layer.bias, False)

    for i, block in enumerate(model.h):
        norm(f"h.{i}.ln_1", block.ln_1)
        dense(f"h.{i}.attn.c_attn", block.attn.c_attn)
        dense(f"h.{i}.attn.c_proj", block.attn.c_proj)
        norm(f"h.{i}.ln_2", block.ln_2)
        dense(f"h.{i}.mlp.c_fc", block.mlp.c_fc)
        dense(f"h.{i}.mlp.c_proj", block.mlp.c_proj)
    norm("ln_f", model.ln_f)
    if model.cls_head is not None:
        dense("cls_head", model.cls_head)
    return names


def export_weights(model: GPT) -> dict[str, np.ndarray]:
    """Every weight as float32 numpy in the contract's names and PyTorch layout."""
    out = {}
    for name, (var, transposed) in _named_variables(model).items():
        value = np.asarray(var.numpy(), dtype=np.float32)
        out[name] = np.ascontiguousarray(value.T if transposed else value)
    return out


def import_weights(model: GPT, weights: dict[str, np.ndarray], allow_missing_head: bool = True) -> list[str]:
    """Assign `weights` (contract names) into `model`; returns the names left at their init.

    A pretrained backbone has no `cls_head.*`; with `allow_missing_head` those stay
    freshly initialised (fine-tuning). Any other missing, unexpected or mis-shaped
    tensor raises ValueError naming it, before anything is assigned.
    """
    targets = _named_variables(model)
    missing = sorted(set(targets) - set(weights))
    unexpected = sorted(set(weights) - set(targets))
    # A classifier checkpoint loaded into a backbone-only model: the head is simply not used.
    unexpected = [n for n in unexpected if not n.startswith("cls_head.")]
    hard_missing = [n for n in missing if not (allow_missing_head and n.startswith("cls_head."))]
    if hard_missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {hard_missing}, unexpected {unexpected}")
    plan = []
    for name, (var, transposed) in targets.items():
        if name not in weights:
            continue
        value = np.asarray(weights[name], dtype=np.float32)
        value = value.T if transposed else value
        if tuple(value.shape) != tuple(var.shape):
            shape = tuple(value.T.shape if transposed else value.shape)
            raise ValueError(f"{name}: checkpoint shape {shape} does not fit the model's {tuple(var.shape)}")
        plan.append((var, value))
    for var, value in plan:
        var.assign(value)
    return missing
