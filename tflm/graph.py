"""Graph helpers for tflm's own graphs.

`function`: `tf.function` without AutoGraph. tflm writes its graphs with
explicit control flow (`tf.while_loop`, `tf.cond`), so AutoGraph has
nothing to convert; with it on, every function a trace calls (Keras layers
and ops included) is parsed and transformed first, a large part of an
export's time. A Python `if` on a tensor then fails at trace time instead
of being converted, which is the intent.

Example:
>>> import tensorflow as tf
>>> double = function(lambda x: x * 2)
>>> int(double(tf.constant(3)))
6
"""

from __future__ import annotations

import functools

import tensorflow as tf

function = functools.partial(tf.function, autograph=False)
