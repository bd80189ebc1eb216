"""Graph helpers for tflm's own graphs.

`function`: `tf.function` without AutoGraph. tflm writes its graphs with
explicit control flow (`tf.while_loop`, `tf.cond`), so AutoGraph has
nothing to convert; with it on, every function a trace calls (Keras layers
and ops included) is parsed and transformed first, which took about half of
an export's time. A Python `if` on a tensor then fails at trace time instead
of being converted, which is the intent.

`reads_hoisted()`: within it, a Keras variable that a `tf.while_loop` body
uses is read once, before the loop, instead of at every iteration;
`transposed(variable)` is its value transposed, and `row_blocks(variable,
parts)` its rows in `parts` blocks, also computed once there.

Example:
>>> import tensorflow as tf
>>> double = function(lambda x: x * 2)
>>> int(double(tf.constant(3)))
6
"""

from __future__ import annotations

import contextlib
import functools
import threading

import keras
import tensorflow as tf

function = functools.partial(tf.function, autograph=False)
_ACTIVE = threading.local()  # the innermost `reads_hoisted` scope


class _HoistedReads(keras.StatelessScope):
    """A stateless scope whose value for a variable is that variable read
    (and autocast, under a mixed policy) in `graph`, the graph the scope was
    entered in: a loop body traced within captures that tensor. Only the
    variables that the traced code uses are read, once per dtype, so an
    export holds no unused one."""

    def __init__(self, graph):
        super().__init__(initialize_variables=False)
        self._graph = graph
        self._reads = {}

    def add_update(self, update):
        variable, _ = update
        raise ValueError(
            f"Variable {variable.path} was assigned while its reads are "
            "hoisted out of a loop (`tflm.graph.reads_hoisted`), where the "
            "assignment would be lost. Assign it outside the scope."
        )

    def get_current_value(self, variable):
        outer = self.original_scope  # an enclosing stateless call's values
        given = None if outer is None else outer.get_current_value(variable)
        if given is not None:
            return given
        key = (id(variable), variable.dtype)  # `dtype` is the autocast one
        if key not in self._reads:
            # The empty scope reads the variable itself, autocast as here.
            with self._graph.as_default(), keras.StatelessScope():
                self._reads[key] = tf.convert_to_tensor(variable.value)
        return self._reads[key]

    def derived(self, variable, key, compute):
        """`compute(variable's value)`, computed once per `key` in the
        scope's graph."""
        key = (key, id(variable), variable.dtype)
        if key not in self._reads:
            value = self.get_current_value(variable)
            with self._graph.as_default():
                self._reads[key] = compute(value)
        return self._reads[key]


@contextlib.contextmanager
def thread_setting(local: threading.local, name: str, value):
    """Within: `local.<name>` is `value` (in this thread), then restored.

    Example:
    >>> mode = threading.local()
    >>> with thread_setting(mode, "on", True):
    ...     mode.on
    True
    >>> getattr(mode, "on", None) is None
    True
    """
    missing = object()
    before = getattr(local, name, missing)
    setattr(local, name, value)
    try:
        yield
    finally:
        if before is missing:
            delattr(local, name)
        else:
            setattr(local, name, before)


def _derived(variable, key, compute):
    """`compute(variable's value)`: within `reads_hoisted()`, computed once
    where the scope was entered (so a loop body uses a copy made before
    the loop); elsewhere, here."""
    scope = getattr(_ACTIVE, "scope", None)
    if scope is not None:
        return scope.derived(variable, key, compute)
    return compute(tf.convert_to_tensor(variable))


def transposed(variable) -> tf.Tensor:
    """`variable`'s value (a matrix) transposed: within `reads_hoisted()`,
    computed once where the scope was entered (so a loop body multiplies
    by a transposed copy made before the loop); elsewhere, here.

    Example:
    >>> v = keras.Variable([[1.0, 2.0]])
    >>> transposed(v).shape
    TensorShape([2, 1])
    """
    return _derived(variable, "transposed", tf.transpose)


def row_blocks(variable, parts: int) -> tuple:
    """`variable`'s value (a matrix) split into `parts` blocks of rows,
    as equal as can be (the first ones a row longer): within
    `reads_hoisted()`, split once where the scope was entered; elsewhere,
    here.

    Example:
    >>> v = keras.Variable([[1.0], [2.0], [3.0]])
    >>> [tuple(b.shape) for b in row_blocks(v, 2)]
    [(2, 1), (1, 1)]
    """
    rows = variable.shape[0]
    if not (isinstance(parts, int) and 1 <= parts <= rows):
        raise ValueError(
            f"parts must be an int from 1 to the matrix's {rows} rows. "
            f"Received: parts={parts!r}."
        )
    sizes = [rows // parts + (i < rows % parts) for i in range(parts)]

    def split(value):
        return tuple(tf.split(value, sizes, axis=0))

    return _derived(variable, ("row_blocks", parts), split)


@contextlib.contextmanager
def reads_hoisted():
    """Within (while tracing a graph function): Keras variables that code
    traced inside uses are read once, in the graph the scope was entered
    in, and a `tf.while_loop` body captures those reads as loop invariants.

    In the plain graph that TF Serving runs, a loop body that reads its
    weights runs one `ReadVariableOp` per weight per iteration (79 of the
    968 ops of a bench-small decode step); reading them once made served
    generation 6-7% faster at batch 1. Under a mixed policy the weights are
    cast once too, so their compute-dtype copies live for the whole loop.
    Assigning a variable within raises `ValueError`. Eagerly, the scope
    does nothing.

    Example:
    >>> v = keras.Variable(2.0)
    >>> @function
    ... def f():
    ...     with reads_hoisted():
    ...         return tf.while_loop(lambda i: i < 10.0, lambda i: i + v, [0.0])
    >>> float(f()[0])
    10.0
    """
    if tf.executing_eagerly():
        yield
        return
    with _HoistedReads(tf.compat.v1.get_default_graph()) as scope:
        with thread_setting(_ACTIVE, "scope", scope):
            yield
