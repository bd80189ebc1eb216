"""Writing new keys and values into a KV cache: by a scatter, or in place.

A cache is `(2, B, K, S, H)` (keys and values, batch, kv heads, slots,
head size). `update(cache, key, value, index)` writes `T` new positions at
slot `index`.

By default the write is a `TensorScatterUpdate`, which runs under XLA (where
it is done in place) and in the plain graph. In the plain graph, though,
TensorFlow copies the whole cache at every write whenever the step also
reads the cache, as attention does: the op may reuse its input's buffer only
when nothing else holds it, and the executor holds it across iterations.

With `in_place=True` the write is `InplaceUpdate` on a `(2*B*K*S, H)` view
of the cache instead: core TensorFlow, no XLA, and no copy. It changes the
buffer it is given, so it is only for a decode loop that owns its cache: the
loop copies the cache once with `owned_copy` before it starts, and every
read of a slot follows the write that the same step made (a decode plan's
`Decoding.own` and `Decoding.step`, see `tflm.models.decode_plan`). XLA has
no `InplaceUpdate` kernel, so loops compiled with XLA keep the scatter. The
in-place write does not check that slots lie inside the cache
(`InplaceUpdate` wraps an index that is out of range, where the scatter
raises); its loop bounds its steps by `S - P`.
"""

from __future__ import annotations

import keras
import numpy as np


def owned_copy(cache):
    """A copy of each layer's cache that no other tensor shares: what
    in-place writes may change. `DeepCopy` is stateful, so graph passes
    never fold it away."""
    import tensorflow as tf

    return [tf.raw_ops.DeepCopy(x=layer_cache) for layer_cache in cache]


def static_shape(x):
    """The shape with Python ints where known, scalar tensors elsewhere."""
    dynamic = keras.ops.shape(x)
    return tuple(
        d if isinstance(d, int) else dynamic[i] for i, d in enumerate(x.shape)
    )


def update(cache, key, value, index, in_place: bool = False):
    """Writes `key` and `value` into `cache` at slot `index`.

    Args:
        cache: `(2, B, K, S, H)`.
        key: `(B, K, T, H)`.
        value: `(B, K, T, H)`.
        index: int scalar, the slot of the first of the `T` new positions.
        in_place: write into `cache`'s own buffer (see the module
            docstring for when that is safe).

    Returns:
        The updated cache, same shape and dtype (with `in_place`, the same
        buffer).
    """
    updates = keras.ops.cast(keras.ops.stack([key, value]), cache.dtype)
    if in_place:
        return _update_in_place(cache, updates, index)
    return _scatter(cache, updates, index)


def _scatter(cache, updates, index):
    shape = static_shape(updates)
    if all(isinstance(d, int) for d in shape[:4]):
        # Static shapes: the index grid is a constant plus the offset.
        grid = np.stack(
            np.meshgrid(*[np.arange(d) for d in shape[:4]], indexing="ij"),
            axis=-1,
        ).astype("int32")
        indices = grid + keras.ops.cast(index, "int32") * np.array(
            [0, 0, 0, 1], "int32"
        )
    else:
        grids = keras.ops.meshgrid(
            keras.ops.arange(2, dtype="int32"),
            keras.ops.arange(shape[1], dtype="int32"),
            keras.ops.arange(shape[2], dtype="int32"),
            keras.ops.arange(shape[3], dtype="int32") + index,
            indexing="ij",
        )
        indices = keras.ops.stack(grids, axis=-1)
    return keras.ops.scatter_update(cache, indices, updates)


def _update_in_place(cache, updates, index):
    import tensorflow as tf

    _, batch, heads, slots, size = static_shape(cache)
    length = static_shape(updates)[3]
    # Row of slot `index` of each (key/value, batch, head) in the flat view.
    first = tf.range(2 * batch * heads) * slots + tf.cast(index, tf.int32)
    if isinstance(length, int) and length == 1:
        rows = first
    else:
        rows = tf.reshape(first[:, None] + tf.range(length)[None], [-1])
    flat = tf.raw_ops.InplaceUpdate(
        x=tf.reshape(cache, [-1, size]),
        i=rows,
        v=tf.reshape(updates, [-1, size]),
    )
    return tf.reshape(flat, tf.shape(cache))
