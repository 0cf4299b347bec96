"""Making a loaded model as fast as MLX's CPU backend allows (no-ops on Metal and CUDA).

What measured faster on the 2-core x86 CI machine (bench/generate.py prints it side by side):

- fp32 scales and biases. The CPU quantized matmul is a scalar loop in the activation dtype;
  fp16/bf16 activations are several times slower than fp32 there, and fp16 scales next to
  fp32 activations (a GGUF file's F32 norms make them fp32) are converted on every call.
- Every quantized matmul split by output rows across one MLX stream per core. MLX's CPU
  kernels are single-threaded, but each stream has its own thread, so the shards run in
  parallel; the rows are views of the same weights (no memory is added) and every output
  element is the same dot product as before, so the results are bit-identical. It pays only
  when the cores are free: on a CPU busy with other work the shards queue behind it
  (llm.cpu_threads sets the split; 1 turns it off).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

_STREAMS: list[Any] = []


def cpu_shards() -> int:
    """How many shards a matmul is split into: the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def tune_model(model: Any, shards: int | None = None) -> None:
    """Tune `model` in place for the default device when it is the CPU."""
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        return
    model.set_dtype(mx.float32)
    shard_matmuls(model, cpu_shards() if shards is None else shards)


def shard_matmuls(model: Any, shards: int) -> int:
    """Split each quantized linear layer (and a tied output embedding) across `shards` streams.

    Returns how many layers were split. shards <= 1 leaves the model as it is.
    """
    import mlx.core as mx
    import mlx.nn as nn

    if shards <= 1:
        return 0
    while len(_STREAMS) < shards - 1:
        # Thread-local: an MLX 0.32 stream belongs to the thread that made it, and the
        # model runs on the caller's thread or on the generation thread.
        _STREAMS.append(mx.new_thread_local_stream(mx.cpu))
    count = 0
    for _, module in model.named_modules():
        if type(module) in (nn.QuantizedLinear, ShardedQuantizedLinear):
            module.__class__ = ShardedQuantizedLinear
        elif type(module) in (nn.QuantizedEmbedding, ShardedQuantizedEmbedding):
            module.__class__ = ShardedQuantizedEmbedding
        else:
            continue
        rows = module["weight"].shape[0]
        step = -(-rows // shards)
        # Plain attributes (not arrays) stay out of the module's parameters.
        object.__setattr__(
            module, "_shard_rows", tuple((a, min(a + step, rows)) for a in range(0, rows, step))
        )
        count += 1
    return count


def unshard_matmuls(model: Any) -> None:
    """Undo shard_matmuls (the weights were never moved)."""
    import mlx.nn as nn

    for _, module in model.named_modules():
        if type(module) is ShardedQuantizedLinear:
            module.__class__ = nn.QuantizedLinear
        elif type(module) is ShardedQuantizedEmbedding:
            module.__class__ = nn.QuantizedEmbedding


def _sharded_matmul(module: Any, x: Any) -> Any:
    import mlx.core as mx

    weight, scales, biases = module["weight"], module["scales"], module.get("biases")
    outputs = []
    for i, (a, b) in enumerate(module._shard_rows):
        # The first shard runs on the caller's stream, the others on their own.
        with mx.stream(_STREAMS[i - 1]) if i else contextlib.nullcontext():
            outputs.append(
                mx.quantized_matmul(
                    x,
                    weight[a:b],
                    scales=scales[a:b],
                    biases=None if biases is None else biases[a:b],
                    transpose=True,
                    group_size=module.group_size,
                    bits=module.bits,
                    mode=module.mode,
                )
            )
    return outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=-1)


def _classes() -> tuple[type, type]:
    import mlx.nn as nn

    class ShardedQuantizedLinear(nn.QuantizedLinear):
        """nn.QuantizedLinear with its matmul split by output rows across CPU streams."""

        def __call__(self, x: Any) -> Any:
            y = _sharded_matmul(self, x)
            return y + self["bias"] if "bias" in self else y

    class ShardedQuantizedEmbedding(nn.QuantizedEmbedding):
        """nn.QuantizedEmbedding whose tied output projection is split the same way."""

        def as_linear(self, x: Any) -> Any:
            return _sharded_matmul(self, x)

    return ShardedQuantizedLinear, ShardedQuantizedEmbedding


ShardedQuantizedLinear, ShardedQuantizedEmbedding = _classes()
