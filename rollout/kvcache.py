"""KV caches for the decoder: Hugging Face's `DynamicCache`, or one whose layers grow in place.

Hugging Face's `DynamicLayer.update` does `torch.cat([keys, new])`: each decoded token copies the
whole cache, which on CPU cost as much time as attention itself (profiled on the 6-layer model at
batch 64). `GrowingLayer` keeps a buffer with spare room at the end, writes new columns in place and
hands attention a view of the filled part; dropping leading columns only moves a start index. To
the model it is still a `DynamicCache`.

The decoder changes caches only through the functions at the bottom (`move_rows`, `pad_left`,
`trim_left`, `concat_rows`, `append_empty_column`), which work on either kind of layer.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """`DynamicLayer` over a buffer `[batch, heads, capacity, dim]` of which `[start:end]` is live."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self._start = self._end = 0

    def _expose(self) -> None:
        self.keys = self._k[:, :, self._start: self._end]
        self.values = self._v[:, :, self._start: self._end]

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        """Copy `keys`/`values` into a fresh buffer with `room` spare columns at the end."""
        b, h, n, d = keys.shape
        self._k = keys.new_empty((b, h, n + room, d))
        self._v = values.new_empty((b, h, n + room, values.shape[-1]))
        self._k[:, :, :n] = keys
        self._v[:, :, :n] = values
        self._start, self._end = 0, n
        self._expose()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        m = key_states.shape[-2]
        if self._k is None:
            self._adopt(key_states, value_states, room=64)
            return self.keys, self.values
        if self._end + m > self._k.shape[-2]:
            live = self._end - self._start
            self._adopt(self.keys, self.values, room=max(64, live // 2) + m)
        self._k[:, :, self._end: self._end + m] = key_states
        self._v[:, :, self._end: self._end + m] = value_states
        self._end += m
        self._expose()
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """A `DynamicCache` made of `GrowingLayer`s (created as the model first writes each layer)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def make_cache(kind: str, config) -> DynamicCache:
    """"growing" (the default) or "dynamic" (Hugging Face's own layers)."""
    if kind == "growing":
        return GrowingCache()
    if kind == "dynamic":
        return DynamicCache(config=config)
    raise ValueError(f"unknown cache kind {kind!r}")


def _growing(layer) -> bool:
    return isinstance(layer, GrowingLayer) and layer._k is not None


def move_rows(cache: DynamicCache, dst: torch.Tensor, src: torch.Tensor, n: int) -> None:
    """Copy rows `src` over rows `dst`, then keep the first `n` rows (a view: only moved rows are copied)."""
    for layer in cache.layers:
        if _growing(layer):
            if len(src):
                layer._k[dst] = layer._k[src]
                layer._v[dst] = layer._v[src]
            layer._k, layer._v = layer._k[:n], layer._v[:n]
            layer._expose()
        else:
            if len(src):
                layer.keys[dst] = layer.keys[src]
                layer.values[dst] = layer.values[src]
            layer.keys, layer.values = layer.keys[:n], layer.values[:n]


def trim_left(cache: DynamicCache, n: int) -> None:
    """Drop the first `n` columns (for a growing layer: no copy, the start moves)."""
    for layer in cache.layers:
        if _growing(layer):
            layer._start += n
            layer._expose()
        else:
            layer.keys, layer.values = layer.keys[:, :, n:], layer.values[:, :, n:]


def pad_left(cache: DynamicCache, n: int) -> None:
    """Prepend `n` zero columns (zeros, not garbage: a masked NaN would still poison attention)."""
    for layer in cache.layers:
        if _growing(layer) and layer._start >= n:
            layer._start -= n
            layer._k[:, :, layer._start: layer._start + n] = 0
            layer._v[:, :, layer._start: layer._start + n] = 0
            layer._expose()
            continue
        keys = torch.nn.functional.pad(layer.keys, (0, 0, n, 0))
        values = torch.nn.functional.pad(layer.values, (0, 0, n, 0))
        if _growing(layer):
            layer._adopt(keys, values, room=max(64, keys.shape[-2] // 2))
        else:
            layer.keys, layer.values = keys, values


def concat_rows(cache: DynamicCache, other: DynamicCache) -> None:
    """Append `other`'s rows (same number of columns) to `cache`'s."""
    for la, lb in zip(cache.layers, other.layers):
        keys, values = torch.cat([la.keys, lb.keys]), torch.cat([la.values, lb.values])
        if _growing(la):
            la._adopt(keys, values, room=max(64, keys.shape[-2] // 2))
        else:
            la.keys, la.values = keys, values


def append_empty_column(cache: DynamicCache) -> None:
    """One zero column at the end (keeps the cache in step with the mask when no row was fed)."""
    for layer in cache.layers:
        b, h = layer.keys.shape[:2]
        layer.update(layer.keys.new_zeros((b, h, 1, layer.keys.shape[-1])),
                     layer.values.new_zeros((b, h, 1, layer.values.shape[-1])))
