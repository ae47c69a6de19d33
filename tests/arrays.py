"""Array generators, the registry of public functions, and comparison helpers.

Shared by every test module (``conftest.py`` holds only the fixtures).  Generators give float64
values; a test casts them to the dtype under test and hands them to a *layout* that keeps the
values but changes the memory (Fortran order, strided and negative-stride views, byte-swapped,
read-only), so every function sees every layout with the same expected result.
"""

from __future__ import annotations

import os
import tracemalloc
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import reference as ref

from csoftmax import _dispatch
from csoftmax._dispatch import FRONTENDS

# ---------------------------------------------------------------------------------------------
# Frontends

#: ``CSOFTMAX_BACKEND=numpy`` runs the whole suite on the NumPy fallback only.
FORCED_NUMPY = os.environ.get("CSOFTMAX_BACKEND", "").lower() == "numpy"
FRONTEND_NAMES = ["numpy"] if FORCED_NUMPY else sorted(FRONTENDS)
HAVE_CYTHON = "cython" in FRONTENDS and not FORCED_NUMPY
BOTH_FRONTENDS = HAVE_CYTHON and "numpy" in FRONTENDS


def _kernel_frontends():
    """The frontends plus one per compiled instruction-set variant this CPU runs."""
    fronts = {name: FRONTENDS[name] for name in FRONTEND_NAMES}
    variants = getattr(_dispatch, "cpu_frontends", None)
    if HAVE_CYTHON and variants is not None:
        fronts.update({f"cython-{path}": fe for path, fe in variants().items()})
    return fronts


KERNEL_FRONTENDS = _kernel_frontends()

FLOAT_DTYPES = (np.float32, np.float64)
FLOAT_IDS = ("float32", "float64")


def make_rng(*key) -> np.random.Generator:
    """A generator seeded from ``key``, so every test sees the same data on every run."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---------------------------------------------------------------------------------------------
# Layouts: the same values in different memory


def _strided(a):
    big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
    view = big[tuple(slice(1, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _negative_strides(a):
    flip = tuple(slice(None, None, -1) for _ in a.shape)
    return np.ascontiguousarray(a[flip])[flip]


def _byteswapped(a):
    return a.astype(a.dtype.newbyteorder())


def _readonly(a):
    b = np.array(a, copy=True)
    b.flags.writeable = False
    return b


LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "C": np.ascontiguousarray,
    "F": np.asfortranarray,
    "strided": _strided,
    "negstride": _negative_strides,
    "byteswapped": _byteswapped,
    "readonly": _readonly,
}


# ---------------------------------------------------------------------------------------------
# Values


def normal(shape, rng, scale=3.0):
    return rng.standard_normal(shape) * scale


def large(shape, rng):
    """Large magnitudes that still fit float32: most entries ~1e4, some +-1e30."""
    x = rng.standard_normal(shape) * 1e4
    pick = rng.random(shape) < 0.2
    x[pick] = rng.choice([-1e30, 1e30, 3e29], size=int(pick.sum()))
    return x


#: Rows (along the last axis) with the inf and NaN patterns that API.md gives rules for.
SPECIAL_ROWS = (
    "masked",  # two -inf entries: masked classes
    "all -inf",
    "+inf",
    "nan",
    "+inf and -inf",
    "plain",
    "+inf and nan",
    "one survivor",  # all -inf but one
)


def special(shape, rng):
    """The rows of SPECIAL_ROWS, repeated, along the last axis (which needs at least 3)."""
    x = normal(shape, rng).reshape(-1, shape[-1])
    inf = np.inf
    for i, row in enumerate(x):
        kind = SPECIAL_ROWS[i % len(SPECIAL_ROWS)]
        if kind == "masked":
            row[[0, 2]] = -inf
        elif kind == "all -inf":
            row[:] = -inf
        elif kind == "+inf":
            row[1] = inf
        elif kind == "nan":
            row[-1] = np.nan
        elif kind == "+inf and -inf":
            row[0], row[1] = inf, -inf
        elif kind == "+inf and nan":
            row[0], row[2] = inf, np.nan
        elif kind == "one survivor":
            row[:] = -inf
            row[1] = 0.5
    return x.reshape(shape)


def constant(shape, rng):
    return np.full(shape, 7.25)


VALUE_KINDS = {"normal": normal, "large": large, "special": special, "constant": constant}


@dataclass(frozen=True)
class Case:
    """An input shape, the axis the function runs along, and the kind of values."""

    id: str
    shape: tuple
    axis: int | None
    kind: str = "normal"

    def values(self, rng) -> np.ndarray:
        """float64 values; for "special" the patterned rows run along ``axis``."""
        if self.kind != "special" or self.axis is None:
            return VALUE_KINDS[self.kind](self.shape, rng)
        moved = list(self.shape)
        moved.append(moved.pop(self.axis))
        return np.moveaxis(special(tuple(moved), rng), -1, self.axis)

    @property
    def finite(self) -> bool:
        return self.kind != "special"


CASES = [
    Case("2d", (5, 7), -1),
    Case("2d-axis0", (5, 7), 0),
    Case("2d-axisNone", (5, 7), None),
    Case("1d", (9,), -1),
    Case("1d-axis0", (9,), 0),
    Case("1d-axisNone", (9,), None),
    Case("3d", (3, 4, 5), -1),
    Case("3d-axis1", (3, 4, 5), 1),
    Case("3d-axis0", (3, 4, 5), 0),
    Case("3d-axis-2", (3, 4, 5), -2),
    Case("3d-axis-3", (3, 4, 5), -3),
    Case("3d-axisNone", (3, 4, 5), None),
    Case("4d-axis2", (2, 3, 4, 5), 2),
    Case("C=1", (6, 1), -1),
    Case("N=1", (1, 8), -1),
    Case("1x1", (1, 1), -1),
    Case("empty-rows", (0, 5), -1),
    Case("empty-cols", (4, 0), -1),
    Case("empty-rows-axis0", (0, 5), 0),
    Case("empty-3d", (2, 0, 3), -1),
    Case("empty-3d-axis1", (2, 0, 3), 1),
    Case("empty-axisNone", (0, 4), None),
    Case("wide", (3, 3000), -1),
    Case("tall", (700, 10), -1),
    Case("tall-axis0", (700, 10), 0),
    Case("large", (6, 9), -1),
    Case("large-axis0", (6, 9), 0),
    Case("constant", (4, 6), -1),
    Case("special", (16, 5), -1),
    Case("special-axis0", (5, 16), 0),
    Case("special-3d-axis1", (2, 8, 3), 1),
    Case("special-wide", (8, 600), -1),
]


# ---------------------------------------------------------------------------------------------
# The public functions of the softmax family


@dataclass(frozen=True)
class Func:
    """A public function of the softmax family and how to make its inputs."""

    name: str
    ref: Callable
    backward: bool = False  # takes (grad_output, output)
    has_out: bool = True
    reduces: bool = False

    def inputs(self, x, axis, rng) -> tuple:
        """float64 inputs (before the dtype cast) built from values ``x``."""
        if not self.backward:
            return (x,)
        g = rng.standard_normal(x.shape)
        forward = ref.softmax if self.name == "softmax_backward" else ref.log_softmax
        return g, np.asarray(forward(x, axis), dtype=np.float64)

    def call(self, frontend, *args, **kwargs):
        return getattr(frontend, self.name)(*args, **kwargs)

    def expected(self, args, axis):
        return self.ref(*args, axis=axis)

    def result_shape(self, shape, axis):
        if not self.reduces:
            return tuple(shape)
        if axis is None:
            return ()
        ax = axis % len(shape)
        return tuple(s for i, s in enumerate(shape) if i != ax)


FUNCS = [
    Func("softmax", ref.softmax),
    Func("log_softmax", ref.log_softmax),
    Func("logsumexp", ref.logsumexp, has_out=False, reduces=True),
    Func("softmax_backward", ref.softmax_backward, backward=True),
    Func("log_softmax_backward", ref.log_softmax_backward, backward=True),
]
FUNC_IDS = [f.name for f in FUNCS]
FORWARD_FUNCS = [f for f in FUNCS if not f.backward]
OUT_FUNCS = [f for f in FUNCS if f.has_out]

ALL_NAMES = (
    "softmax",
    "log_softmax",
    "logsumexp",
    "softmax_backward",
    "log_softmax_backward",
    "cross_entropy",
    "cross_entropy_with_grad",
)


# ---------------------------------------------------------------------------------------------
# Cross-entropy inputs


def ce_inputs(n, c, rng, *, kind="int", ignore_index=None, weight=False, scale=3.0):
    """(logits, target, weight) as float64 / int64; ``ignore_index`` set on every 4th row."""
    logits = normal((n, c), rng, scale)
    if kind == "int":
        target = rng.integers(0, c, size=n) if c else np.zeros(n, dtype=np.int64)
        if ignore_index is not None and n:
            target[::4] = ignore_index
    else:
        target = rng.random((n, c)) * 1.5  # need not sum to one
    w = rng.uniform(0.5, 2.0, size=c) if weight else None
    return logits, target, w


# ---------------------------------------------------------------------------------------------
# Comparisons

TOLERANCES = {  # (rtol, atol relative to the row's scale)
    np.dtype(np.float16): (2e-3, 2e-3),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(np.float64): (1e-12, 1e-12),
}


def row_scale(arrays, axis=None, keepdims=True):
    """max(1, largest finite |value| along ``axis``) over ``arrays``: the absolute-error unit."""
    scale = np.float64(1.0)
    for a in arrays:
        a = np.abs(np.asarray(a, dtype=np.float64))
        ax = axis if a.ndim else None
        m = np.max(a, axis=ax, keepdims=keepdims, initial=1.0, where=np.isfinite(a))
        scale = np.maximum(scale, m)
    return scale


def assert_close(actual, expected, dtype, scale=1.0, *, what="result", factor=1.0):
    """NaN where expected is NaN, the same infinities, finite values within the dtype's
    tolerance (``rtol * |expected| + atol * scale``, both times ``factor``)."""
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(np.asarray(expected, dtype=np.longdouble), dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if not np.array_equal(nan_a, nan_e):
        idx = np.argwhere(nan_a != nan_e)[:5].tolist()
        raise AssertionError(
            f"{what}: NaN positions differ at {idx}:\nactual={actual}\nexpected={expected}"
        )
    inf_e = np.isinf(expected) | np.isinf(actual)
    if not np.array_equal(actual[inf_e], expected[inf_e]):
        idx = np.argwhere(inf_e & (actual != expected))[:5].tolist()
        raise AssertionError(
            f"{what}: infinities differ at {idx}:\nactual={actual}\nexpected={expected}"
        )
    fin = ~(nan_e | inf_e)
    bound = factor * (atol * np.broadcast_to(scale, expected.shape) + rtol * np.abs(expected))
    err = np.zeros(expected.shape)
    err[fin] = np.abs(actual[fin] - expected[fin])
    if np.any(err > bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: {int(np.sum(err > bound))} of {err.size} values outside tolerance "
            f"(rtol={rtol * factor:g}, atol={atol * factor:g} x scale); worst at {i}: "
            f"actual={actual[i]!r} expected={expected[i]!r} err={err[i]:.3g} "
            f"bound={bound[i]:.3g}"
        )


def assert_bitwise_equal(a, b, what="result"):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (
        f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    )
    assert a.tobytes() == b.tobytes(), f"{what}: not bitwise equal"


def peak_traced_bytes(fn):
    """The peak of the memory that tracemalloc traces (NumPy's data buffers among it) while
    ``fn()`` runs: a call warmed up first allocates there only what it needs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _snapshot(args, kwargs):
    out = kwargs.get("out")
    arrays = [a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray) and a is not out]
    return [(a, np.array(a, copy=True)) for a in arrays]


def _check_snapshot(snaps):
    for i, (a, copy) in enumerate(snaps):
        assert a.dtype == copy.dtype, f"input {i}: dtype changed"
        assert a.tobytes() == copy.tobytes(), f"input {i} of shape {a.shape} was modified"


def call_unmodified(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, asserting afterwards (also when it raises) that no ndarray
    argument other than ``out`` changed, bit for bit."""
    snaps = _snapshot(args, kwargs)
    try:
        return fn(*args, **kwargs)
    finally:
        _check_snapshot(snaps)


def names_shape(message, shape) -> bool:
    """Whether ``message`` names ``shape`` in one of the usual spellings."""
    shape = tuple(int(s) for s in shape)
    compact = message.replace(" ", "")
    spellings = {str(shape).replace(" ", ""), str(list(shape)).replace(" ", "")}
    if len(shape) > 1:
        spellings |= {"x".join(map(str, shape)), "\u00d7".join(map(str, shape))}
    return any(s in compact for s in spellings)


def assert_names_shapes(excinfo, *shapes):
    msg = str(excinfo.value)
    for shape in shapes:
        assert names_shape(msg, shape), f"message {msg!r} does not name shape {shape}"


class ArrayOnly:
    """An array-like with only ``__array__``."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        if copy:
            return np.array(self._a, dtype=dtype, copy=True)
        return np.asarray(self._a, dtype=dtype)


class DLPackOnly:
    """An array-like with only the DLPack protocol (no ``__array__``)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()
