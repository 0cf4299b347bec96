"""Sharing an MLX KV cache between requests: the system prompt's KV, computed once.

The MLX engine keeps the KV of each registered prefix (rag.llm.base.PrefixCache) and starts
every request that begins with it from a clone; the batcher (rag.llm.batching) stores and
clones them the same way inside a batch.
"""

from __future__ import annotations

from typing import Any


def snapshot_cache(cache: list[Any]) -> list[Any]:
    """Compact, evaluated copies of a KV cache's used part, safe to share between requests."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    copies = []
    for layer in cache:
        if type(layer) is not KVCache:  # e.g. a sliding-window layer: never shared
            raise TypeError(f"cannot share a {type(layer).__name__}")
        copy = KVCache()
        copy.keys = mx.contiguous(layer.keys[..., : layer.offset, :])
        copy.values = mx.contiguous(layer.values[..., : layer.offset, :])
        copy.offset = layer.offset
        copies.append(copy)
    mx.eval([c.state for c in copies])
    return copies


def clone_cache(stored: list[Any]) -> list[Any]:
    """A request's own KVCache objects over the stored arrays.

    The buffers are shared, never written: a KVCache holding exactly `offset` tokens grows
    into a new buffer on its first update, and the batch merge only reads them.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    clones = []
    for layer in stored:
        clone = KVCache()
        clone.keys, clone.values = mx.array(layer.keys), mx.array(layer.values)
        clone.offset = layer.offset
        clones.append(clone)
    return clones
