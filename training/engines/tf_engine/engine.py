"""The TensorFlow engine: the contract's GPT in Keras 3, trained by `tf.function` steps.

One code path serves one device, `MirroredStrategy` (several local GPUs, or
several logical CPUs in tests) and `MultiWorkerMirroredStrategy` (hosts named
in `TF_CONFIG`): each replica computes the gradient of its rows, the replicas'
gradients are summed, and the AdamW update (the PyTorch rule, see `optim.py`)
is applied once to the mirrored weights. The loss of a micro-batch is its sum
over all replicas divided by its global row (or token) count, so every replica
layout computes the same mean as one device would.

The per-micro-batch forward/backward is XLA-compiled (`jit_compile`) unless
`ENVKIT_TF_XLA=0`; `benchmarks/throughput_tf.py` measures both against plain
Keras `model.fit`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from envkit.matrix import MatrixError, load_matrix
from training.engines.base import (
    Batch,
    ClsBatch,
    DeviceInfo,
    DistInfo,
    Engine,
    EngineError,
    EvalOutput,
    LMBatch,
    OptimSpec,
    StepResult,
    Task,
)
from training.engines.tf_quiet import quiet_startup

if TYPE_CHECKING:
    from training.core.config import ModelConfig, TrainConfig

STATE_FILE = "optimizer.safetensors"
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def tf_config_workers() -> tuple[int, int] | None:
    """(worker index, worker count) from `TF_CONFIG`, or None when it names no cluster."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        workers = spec.get("cluster", {}).get("worker", [])
        task = spec.get("task", {})
    except (ValueError, AttributeError):
        raise EngineError("TF_CONFIG is not valid JSON; see tf.distribute.cluster_resolver") from None
    if len(workers) < 1:
        return None
    if task.get("type", "worker") != "worker":
        raise EngineError(f"TF_CONFIG task type {task.get('type')!r} is not supported; use 'worker'")
    return int(task.get("index", 0)), len(workers)


def _configure_devices(cfg: TrainConfig) -> None:
    """Threads and visible devices; only takes effect before TensorFlow starts its runtime."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device, threads = cfg.runtime.device, cfg.runtime.threads
    if device == "gpu" and not gpus:
        raise EngineError(
            "device=gpu but TensorFlow sees no GPU; install tensorflow[and-cuda] or use device=cpu"
        )
    # Each setting is refused once the runtime is up (a second engine in one process, e.g. the
    # test stage after fine-tuning): the first engine's settings then stay, which is what we want.
    with contextlib.suppress(RuntimeError):
        if device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
    for gpu in gpus if device != "cpu" else []:
        with contextlib.suppress(RuntimeError):
            # share the GPU with evaluation tools instead of reserving all of its memory
            tf.config.experimental.set_memory_growth(gpu, True)
    if threads > 0:
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))


_MULTI_WORKER: Any = None  # one per process: collectives are configured once, at start-up


def _multi_worker_strategy() -> Any:
    """The process's MultiWorkerMirroredStrategy (TF_CONFIG), created before anything starts the runtime."""
    global _MULTI_WORKER
    if _MULTI_WORKER is None:
        import tensorflow as tf

        try:
            _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:
            raise EngineError(
                f"TF_CONFIG names a cluster but TensorFlow's runtime was already started in this "
                f"process ({exc}); run one training command per worker process"
            ) from None
    return _MULTI_WORKER


class TFEngine(Engine):
    """Keras 3 GPT on TensorFlow behind the shared `Engine` interface."""

    name = "tensorflow"

    def __init__(self, cfg: TrainConfig, dist: DistInfo) -> None:
        super().__init__(cfg, dist)
        import tensorflow as tf

        self.tf = tf
        cluster = tf_config_workers()
        if cluster is None and dist.world_size > 1:
            raise EngineError(
                "engine=tensorflow does not run under torchrun; launch one process per host "
                "with TF_CONFIG (MultiWorkerMirroredStrategy) instead"
            )
        if cluster is not None and cluster[1] > 1 and (dist.rank, dist.world_size) != cluster:
            # the loop shards data and picks the writing process by rank: it must agree with TF_CONFIG
            raise EngineError(
                f"TF_CONFIG makes this worker {cluster[0]} of {cluster[1]} but the run sees rank "
                f"{dist.rank} of {dist.world_size}; set RANK={cluster[0]} WORLD_SIZE={cluster[1]}"
            )
        _configure_devices(cfg)
        multi_worker = _multi_worker_strategy() if cluster is not None and cluster[1] > 1 else None
        with quiet_startup():
            self.gpus = tf.config.list_logical_devices("GPU")  # starts the runtime
        if not self.gpus:
            # Bit-exact resume on CPU; on GPUs determinism costs speed and is not promised.
            tf.config.experimental.enable_op_determinism()
        self.strategy = multi_worker or self._make_strategy()
        self.workers = cluster[1] if cluster else 1
        self.local_replicas = self.strategy.num_replicas_in_sync // self.workers
        self.dtype = self._choose_dtype()
        # XLA fuses the many small ops of a small model's step: about 1.4x the tokens/s of the
        # plain graph on the 2-core CPU (benchmarks/throughput_tf.py), and the usual win on
        # GPUs. ENVKIT_TF_XLA=0 turns it off (for an op XLA cannot compile).
        self.jit_compile = os.environ.get("ENVKIT_TF_XLA", "1") != "0" or cfg.runtime.compile
        self.model: Any = None
        self.task: Task = "lm"
        self.pad_id = 0
        self.micro_count = 0  # dropout seeds derive from (seed, micro_count): the whole RNG state

    # -- setup ---------------------------------------------------------------------------------

    def _make_strategy(self) -> Any:
        """Mirrored over every local GPU (or logical CPU device) when there are several."""
        tf = self.tf
        devices = self.gpus or tf.config.list_logical_devices("CPU")
        if len(devices) > 1:
            cross = None if self.gpus else tf.distribute.ReductionToOneDevice()
            return tf.distribute.MirroredStrategy(devices=[d.name for d in devices], cross_device_ops=cross)
        return tf.distribute.get_strategy()

    def _choose_dtype(self) -> str:
        """dtype=auto: bf16 on compute capability >= 8.0 (native), fp16 + loss scaling below, fp32 on CPU."""
        want = self.cfg.runtime.dtype
        if want == "auto":
            if not self.gpus:
                return "fp32"
            details = self.tf.config.experimental.get_device_details(
                self.tf.config.list_physical_devices("GPU")[0]
            )
            return "bf16" if details.get("compute_capability", (0, 0)) >= (8, 0) else "fp16"
        return want

    def build(
        self,
        task: Task,
        model: ModelConfig,
        pad_id: int,
        weights: dict[str, np.ndarray] | None,
        optim: OptimSpec,
    ) -> None:
        import keras

        from training.engines.tf_engine.model import GPT, _named_variables, import_weights
        from training.engines.tf_engine.optim import AdamW, DynamicLossScale

        self.task, self.pad_id, self.model_cfg = task, pad_id, model
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(POLICIES[self.dtype])
        try:
            with self.strategy.scope():
                self.model = GPT(model, with_classifier=task == "cls", seed=self.cfg.runtime.seed).build_all()
                named = _named_variables(self.model)
                if weights is not None:
                    try:
                        import_weights(self.model, weights, allow_missing_head=True)
                    except ValueError as exc:
                        raise EngineError(f"cannot start from the given weights: {exc}") from None
                self.param_names = list(named)
                self.params = [var for var, _ in named.values()]
                # Decay only the matmul kernels: never norms, biases or the (tied) embeddings.
                decay = [transposed for _, transposed in named.values()]
                # AdamW works on the tf.Variables (mirrored under a strategy) behind the Keras ones.
                self.opt = AdamW(
                    [p.value for p in self.params],
                    self.param_names,
                    decay,
                    optim.weight_decay,
                    optim.beta1,
                    optim.beta2,
                    optim.eps,
                )
                self.scaler = DynamicLossScale(enabled=self.dtype == "fp16")
        finally:
            keras.config.set_dtype_policy(previous)
        self.micro_count = 0
        self._compile_steps()

    def _compile_steps(self) -> None:
        tf = self.tf
        model, params, strategy = self.model, self.params, self.strategy
        lm = self.task == "lm"
        pad_id = self.pad_id
        replicas = self.strategy.num_replicas_in_sync

        def micro_loss_sums(x: Any, y: Any, w: Any, seed: Any, training: bool) -> tuple[Any, Any]:
            """(weighted loss sum, logits) for one micro-batch shard."""
            hidden = model(x, training=training, dropout_seed=seed)
            if lm:
                logits = model.lm_logits(hidden)
                per_row = tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits), axis=1
                )
            else:
                logits = model.cls_logits(hidden, tf.not_equal(x, pad_id))
                per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            return tf.reduce_sum(per_row * w), logits

        def micro_grads(x: Any, y: Any, w: Any, seed: Any, denom: Any, scale: Any) -> tuple[Any, list[Any]]:
            with tf.GradientTape() as tape:
                loss_sum, _ = micro_loss_sums(x, y, w, seed, training=True)
                loss = loss_sum / denom
                scaled = loss * scale
            return loss, tape.gradient(scaled, params)

        grad_fn = tf.function(
            micro_grads, jit_compile=self.jit_compile, reduce_retracing=True, autograph=False
        )

        def replica_step(xs: Any, ys: Any, ws: Any, seeds: Any, scale: Any) -> tuple[Any, list[Any]]:
            ctx = tf.distribute.get_replica_context()
            rows = ctx.all_reduce(
                tf.distribute.ReduceOp.SUM, tf.reduce_sum(ws, axis=1)
            )  # [A] rows per micro-batch, all replicas
            per_row = tf.cast(tf.shape(xs)[2], tf.float32) if lm else tf.constant(1.0)
            n_micro = xs.shape[0]
            total_loss, total = tf.constant(0.0), [tf.zeros_like(p) for p in params]
            for i in range(n_micro):  # unrolled: accumulation length is static per trace
                seed = tf.random.experimental.stateless_fold_in(seeds[i], ctx.replica_id_in_sync_group)
                denom = tf.maximum(rows[i] * per_row, 1.0) * n_micro
                loss, grads = grad_fn(xs[i], ys[i], ws[i], seed, denom, scale)
                total_loss += loss
                total = [a + tf.cast(g, tf.float32) for a, g in zip(total, grads, strict=True)]
            return total_loss, total

        def train(xs: Any, ys: Any, ws: Any, seeds: Any, clip: Any) -> tuple[Any, Any, Any]:
            scale = self.scaler.scale.read_value()
            loss, grads = strategy.run(replica_step, args=(xs, ys, ws, seeds, scale))
            if replicas > 1:
                loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
                grads = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
            grads = [g / scale for g in grads]
            norm = tf.linalg.global_norm(grads)
            finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(norm))
            # torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), never above 1
            coef = tf.where(clip > 0, tf.minimum(1.0, clip / (norm + 1e-6)), 1.0)

            def update() -> Any:
                self.opt.apply([g * coef for g in grads])
                return tf.constant(True)

            tf.cond(finite, update, lambda: tf.constant(False))
            self.scaler.update(finite)
            # skipped = no update applied. Under float16 an overflowing gradient is routine (the
            # loss scale halves); the loop counts such a skip and stops only on a non-finite loss.
            return loss, norm, tf.logical_not(finite)

        def evaluate(x: Any, y: Any) -> tuple[Any, Any]:
            w = tf.ones([tf.shape(x)[0]], tf.float32)
            return micro_loss_sums(x, y, w, None, training=False)

        # XLA compiles the per-micro-batch forward/backward (grad_fn), not the whole step: with
        # the optimizer inside, XLA took the weights as compile-time constants and recompiled
        # every step; collectives must stay outside XLA anyway.
        self._train_fn = tf.function(train, reduce_retracing=True, autograph=False)
        # Any batch shape through one trace: evaluation batches end with a short one.
        ids_spec = tf.TensorSpec([None, None], tf.int32)
        target_spec = tf.TensorSpec([None, None] if lm else [None], tf.int32)
        self._eval_fn = tf.function(
            evaluate, jit_compile=self.jit_compile, input_signature=[ids_spec, target_spec]
        )

    # -- steps ---------------------------------------------------------------------------------

    def _stack(self, micro_batches: list[Batch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[A, rows, ...] ids/targets and [A, rows] row weights; short batches are padded with weight 0."""
        if not micro_batches:
            raise EngineError("train_step needs at least one micro-batch")
        xs = [b.x if isinstance(b, LMBatch) else b.ids for b in micro_batches]
        ys = [b.y if isinstance(b, LMBatch) else b.labels for b in micro_batches]
        rows = max(len(x) for x in xs)
        rows += -rows % self.local_replicas  # every replica gets the same number of rows
        fill = 0 if self.task == "lm" else self.pad_id
        width = xs[0].shape[1]
        x_out = np.full((len(xs), rows, width), fill, dtype=np.int32)
        y_out = np.zeros((len(xs), rows, *ys[0].shape[1:]), dtype=np.int32)
        w_out = np.zeros((len(xs), rows), dtype=np.float32)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            x_out[i, : len(x)], y_out[i, : len(y)], w_out[i, : len(x)] = x, y, 1.0
        return x_out, y_out, w_out

    def _distribute(self, rows: tuple[np.ndarray, ...], whole: np.ndarray) -> tuple[Any, ...]:
        """Split axis 1 (rows) of each of `rows` across this worker's replicas; `whole` goes to all."""
        tf = self.tf
        if self.strategy.num_replicas_in_sync == 1:
            return (*(tf.constant(a) for a in rows), tf.constant(whole))
        local = self.local_replicas
        parts = [np.split(a, local, axis=1) for a in rows]

        def shard(ctx: Any) -> tuple[Any, ...]:
            r = ctx.replica_id_in_sync_group % local
            return (*(tf.constant(p[r]) for p in parts), tf.constant(whole))

        return self.strategy.experimental_distribute_values_from_function(shard)

    def train_step(self, micro_batches: list[Batch], grad_clip: float) -> StepResult:
        xs, ys, ws = self._stack(micro_batches)
        n = len(micro_batches)
        seeds = np.stack(
            [np.array([self.cfg.runtime.seed, self.micro_count + i], dtype=np.int64) for i in range(n)]
        ).astype(np.int32)
        self.micro_count += n
        xs_d, ys_d, ws_d, seeds_d = self._distribute((xs, ys, ws), seeds)
        loss, norm, skipped = self._train_fn(xs_d, ys_d, ws_d, seeds_d, self.tf.constant(float(grad_clip)))
        return StepResult(loss=float(loss), grad_norm=float(norm), skipped=bool(skipped))

    def eval_step(self, batch: Batch) -> EvalOutput:
        if isinstance(batch, LMBatch):
            loss_sum, _ = self._eval_fn(batch.x.astype(np.int32), batch.y.astype(np.int32))
            return EvalOutput(loss_sum=float(loss_sum), count=int(batch.y.size))
        if not isinstance(batch, ClsBatch):
            raise EngineError(f"unknown batch type {type(batch).__name__}")
        loss_sum, logits = self._eval_fn(batch.ids.astype(np.int32), batch.labels.astype(np.int32))
        return EvalOutput(loss_sum=float(loss_sum), count=len(batch.labels), logits=np.asarray(logits))

    def set_lr(self, lr: float) -> None:
        self.opt.lr.assign(float(lr))

    # -- weights and state ---------------------------------------------------------------------

    def num_params(self, exclude_position: bool = True) -> int:
        return sum(
            int(np.prod(p.shape))
            for name, p in zip(self.param_names, self.params, strict=True)
            if not (exclude_position and name == "wpe.weight")
        )

    def export_weights(self) -> dict[str, np.ndarray]:
        from training.engines.tf_engine.model import export_weights

        return export_weights(self.model)

    def import_weights(self, weights: dict[str, np.ndarray], strict: bool = True) -> None:
        from training.engines.tf_engine.model import import_weights

        try:
            import_weights(self.model, weights, allow_missing_head=not strict)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

    def _state_variables(self) -> dict[str, Any]:
        state = dict(self.opt.state())
        state.update(self.scaler.state())
        return state

    def save_state(self, directory: Path | None) -> None:
        from safetensors.numpy import save_file

        if directory is None:  # a non-main worker: the state is mirrored, rank 0 writes it
            return
        tensors = {name: np.asarray(var.numpy()) for name, var in self._state_variables().items()}
        tensors["micro_count"] = np.asarray(self.micro_count, dtype=np.int64)
        save_file(tensors, str(Path(directory) / STATE_FILE), metadata={"engine": self.name})

    def load_state(self, directory: Path) -> None:
        from safetensors.numpy import load_file

        path = Path(directory) / STATE_FILE
        if not path.is_file():
            raise EngineError(f"{path} is missing: the checkpoint was not written by engine=tensorflow")
        tensors = load_file(str(path))
        variables = self._state_variables()
        missing = sorted(set(variables) - set(tensors))
        if missing or "micro_count" not in tensors:
            raise EngineError(f"{path} does not fit this model (missing {missing[:3]} ...)")
        for name, var in variables.items():
            if tuple(tensors[name].shape) != tuple(var.shape):
                raise EngineError(
                    f"{path}: {name} has shape {tensors[name].shape}, the model needs {var.shape}"
                )
        for name, var in variables.items():
            var.assign(tensors[name])
        self.micro_count = int(tensors["micro_count"])

    # -- environment ---------------------------------------------------------------------------

    def device_info(self) -> DeviceInfo:
        if not self.gpus:
            return DeviceInfo("cpu", "cpu", self.dtype, None, "no dense peak for a CPU in the matrix")
        details = self.tf.config.experimental.get_device_details(
            self.tf.config.list_physical_devices("GPU")[0]
        )
        name = str(details.get("device_name", "GPU"))
        key = {"bf16": "bf16", "fp16": "fp16"}.get(self.dtype)
        if key is None:
            key = "tf32" if self.tf.config.experimental.tensor_float_32_execution_enabled() else "fp32"
        try:
            lookup = load_matrix().peak_lookup(name, key)
        except MatrixError as exc:  # a broken matrix.yaml: say so, train on
            return DeviceInfo("gpu", name, self.dtype, None, f"the version matrix cannot be read ({exc})")
        return DeviceInfo("gpu", name, self.dtype, lookup.tflops, lookup.reason)

    def peak_memory_bytes(self) -> int | None:
        if self.gpus:
            return int(self.tf.config.experimental.get_memory_info("GPU:0")["peak"])
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        if self.workers == 1:
            return values
        tf, strategy = self.tf, self.strategy
        arr = np.asarray(values, dtype=np.float64)

        def first_replica_only(ctx: Any) -> Any:
            # one contribution per worker: replica 0 of each worker carries the values
            local_first = ctx.replica_id_in_sync_group % self.local_replicas == 0
            return tf.constant(arr if local_first else np.zeros_like(arr))

        per_replica = strategy.experimental_distribute_values_from_function(first_replica_only)
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return np.asarray(total).astype(np.asarray(values).dtype)

    def barrier(self) -> None:
        if self.workers > 1:
            self.all_reduce_sum(np.zeros(1))
