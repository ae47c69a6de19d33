"""Every error of API.md: the exact exception type, a message that names the offending shape or
value, and nothing modified (inputs, ``out``, and ``logits`` passed as ``out``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from arrays import (
    ALL_NAMES,
    FUNC_IDS,
    FUNCS,
    OUT_FUNCS,
    assert_names_shapes,
    call_unmodified,
    names_shape,
)

CE_NAMES = ("cross_entropy", "cross_entropy_with_grad")
OUT_NAMES = tuple(f.name for f in OUT_FUNCS) + ("cross_entropy_with_grad",)


def valid_args(name, rng, dtype=np.float64, shape=(4, 5)):
    """Arguments of a valid call to ``name``: x, (grad_output, output) or (logits, target)."""
    x = rng.standard_normal(shape).astype(dtype)
    if name in ("softmax_backward", "log_softmax_backward"):
        return [rng.standard_normal(shape).astype(dtype), x]
    if name in CE_NAMES:
        return [x, rng.integers(0, shape[-1], size=shape[0])]
    return [x]


def raises_unmodified(exc, fn, *args, **kwargs):
    """pytest.raises(exc) around ``fn``, also checking that no array argument changed (``out``
    included) -- "a clear message, and nothing modified"."""
    out = kwargs.get("out")
    out_copy = None if out is None else np.array(out, copy=True)
    with pytest.raises(exc) as excinfo:
        call_unmodified(fn, *args, **kwargs)
    assert type(excinfo.value) is exc or issubclass(type(excinfo.value), exc)
    if out is not None:
        assert out.tobytes() == out_copy.tobytes(), "out was modified by a failing call"
    return excinfo


def names_number(message, value) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message) is not None


# ---------------------------------------------------------------------------------------------
# Arguments every function takes


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("num_threads", [0, -1])
def test_num_threads_below_one(frontend, name, num_threads, rng):
    args = valid_args(name, rng)
    raises_unmodified(ValueError, getattr(frontend, name), *args, num_threads=num_threads)


BAD_DTYPES = {
    "complex": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object),
    "str": lambda a: a.astype(str),
}


_TWO_ARRAYS = ("softmax_backward", "log_softmax_backward", *CE_NAMES)


@pytest.mark.parametrize(
    ("name", "position"), [(n, 0) for n in ALL_NAMES] + [(n, 1) for n in _TWO_ARRAYS]
)
@pytest.mark.parametrize("bad", list(BAD_DTYPES))
def test_type_errors(frontend, name, position, bad, rng):
    """Complex, object and string arrays (also as class labels) are a TypeError."""
    args = valid_args(name, rng)
    args[position] = BAD_DTYPES[bad](args[position])
    raises_unmodified(TypeError, getattr(frontend, name), *args)


@pytest.mark.parametrize("bad", list(BAD_DTYPES))
@pytest.mark.parametrize("name", CE_NAMES)
def test_type_errors_weight_and_prob_target(frontend, name, bad, rng):
    x = rng.standard_normal((4, 5))
    y = rng.random((4, 5))
    fn = getattr(frontend, name)
    raises_unmodified(TypeError, fn, x, BAD_DTYPES[bad](y))
    raises_unmodified(TypeError, fn, x, np.arange(4), weight=BAD_DTYPES[bad](np.ones(5)))


# ---------------------------------------------------------------------------------------------
# Axes and shapes


@pytest.mark.parametrize("func", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((4, 5), 2),
        ((4, 5), -3),
        ((6,), 1),
        ((6,), -2),
        ((2, 3, 4), 3),
        ((2, 3, 4), -4),
        ((), 1),
        ((), -2),
    ],
)
def test_axis_out_of_range(frontend, func, shape, axis, rng):
    x = np.asarray(rng.standard_normal(shape))
    args = (x, x) if func.backward else (x,)
    excinfo = raises_unmodified(ValueError, getattr(frontend, func.name), *args, axis=axis)
    msg = str(excinfo.value)
    assert names_number(msg, axis), f"message {msg!r} does not name axis {axis}"
    assert names_shape(msg, shape) or names_number(msg, len(shape)), (
        f"message {msg!r} names neither the shape {shape} nor its dimension"
    )


@pytest.mark.parametrize("func", [f for f in FUNCS if f.backward], ids=lambda f: f.name)
@pytest.mark.parametrize(
    ("g_shape", "a_shape"),
    [((4, 5), (4, 6)), ((4, 5), (5, 4)), ((20,), (4, 5)), ((4, 5), (1, 5)), ((2, 3, 4), (2, 4, 3))],
)
def test_backward_shape_mismatch(frontend, func, g_shape, a_shape, rng):
    g, a = rng.standard_normal(g_shape), rng.random(a_shape)
    excinfo = raises_unmodified(ValueError, getattr(frontend, func.name), g, a)
    assert_names_shapes(excinfo, g_shape, a_shape)


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize("shape", [(2, 3, 4), ()])
def test_cross_entropy_logits_ndim(frontend, name, shape, rng):
    logits = np.asarray(rng.standard_normal(shape))
    target = np.zeros(shape[:1], dtype=np.int64)
    excinfo = raises_unmodified(ValueError, getattr(frontend, name), logits, target)
    assert_names_shapes(excinfo, shape)


TARGET_MISMATCHES = [  # (logits shape, target)
    ((7, 5), np.zeros(6, dtype=np.int64)),
    ((7, 5), np.zeros(8, dtype=np.int64)),
    ((7, 5), np.zeros((7, 1), dtype=np.int64)),
    ((7, 5), np.zeros((7, 5), dtype=np.int64)),
    ((7, 5), np.int64(2)),
    ((5,), np.zeros(3, dtype=np.int64)),
    ((7, 5), np.full((7, 4), 0.2)),
    ((7, 5), np.full((5, 7), 0.2)),
    ((7, 5), np.full((7, 5, 1), 0.2)),
    ((5,), np.full((1, 5), 0.2)),
]


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize(
    ("shape", "target"),
    TARGET_MISMATCHES,
    ids=[f"{s}-{t.dtype}{t.shape}" for s, t in TARGET_MISMATCHES],
)
def test_cross_entropy_target_shape(frontend, name, shape, target, rng):
    logits = rng.standard_normal(shape)
    excinfo = raises_unmodified(ValueError, getattr(frontend, name), logits, target)
    assert_names_shapes(excinfo, shape, np.shape(target))


@pytest.mark.parametrize("name", CE_NAMES)
def test_cross_entropy_float_target_of_label_shape(frontend, name, rng):
    """Floating targets are probabilities of the logits' shape, never labels stored as float."""
    logits = rng.standard_normal((7, 5))
    raises_unmodified(ValueError, getattr(frontend, name), logits, np.zeros(7))


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize("w_shape", [(4,), (6,), (1, 5), ()])
def test_cross_entropy_weight_shape(frontend, name, w_shape, rng):
    logits = rng.standard_normal((7, 5))
    target = rng.integers(0, 5, size=7)
    weight = np.ones(w_shape)
    excinfo = raises_unmodified(ValueError, getattr(frontend, name), logits, target, weight=weight)
    assert_names_shapes(excinfo, w_shape)


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize("kind", ["int", "prob"])
def test_cross_entropy_no_classes(frontend, name, kind):
    logits = np.zeros((4, 0))
    target = np.zeros(4, dtype=np.int64) if kind == "int" else np.zeros((4, 0))
    raises_unmodified(ValueError, getattr(frontend, name), logits, target)


# ---------------------------------------------------------------------------------------------
# Class indices outside [0, C)

BAD_LABELS = [  # (id, n, C, target dtype, {row: label}, ignore_index, (bad value, its row))
    ("just-above", 8, 5, np.int64, {3: 5}, -100, (5, 3)),
    ("first-of-two", 20, 5, np.int64, {13: 77, 17: 88}, -100, (77, 13)),
    ("negative", 9, 5, np.int64, {6: -3}, -100, (-3, 6)),
    ("default-ignore-not-ignored", 9, 5, np.int64, {4: -100}, 2, (-100, 4)),
    ("int32", 9, 5, np.int32, {7: 9}, -100, (9, 7)),
    ("int8", 9, 5, np.int8, {5: -7}, -100, (-7, 5)),
    ("uint8", 9, 5, np.uint8, {2: 255}, -100, (255, 2)),
    ("uint64-huge", 9, 5, np.uint64, {1: 2**63 + 5}, -100, (2**63 + 5, 1)),
    ("int64-min", 9, 5, np.int64, {8: -(2**63)}, -100, (-(2**63), 8)),
    ("many-rows", 30000, 7, np.int64, {17345: 7, 29999: -1}, -100, (7, 17345)),
    ("last-row", 30000, 7, np.int32, {29999: 12}, -100, (12, 29999)),
    # more labels than one unit of the label check over threads (65536)
    ("chunks", 140000, 2, np.int64, {139999: 2, 70000: -5}, -100, (-5, 70000)),
    ("chunks-last", 140000, 2, np.int32, {139999: 2}, -100, (2, 139999)),
]


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize(
    ("n", "c", "tdtype", "bad", "ignore_index", "first"),
    [b[1:] for b in BAD_LABELS],
    ids=[b[0] for b in BAD_LABELS],
)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_bad_class_index(frontend, name, n, c, tdtype, bad, ignore_index, first, num_threads, rng):
    logits = rng.standard_normal((n, c))
    target = rng.integers(0, c, size=n).astype(tdtype)
    target[target == ignore_index] = 0
    for row, value in bad.items():
        target[row] = value
    excinfo = raises_unmodified(
        ValueError,
        getattr(frontend, name),
        logits,
        target,
        ignore_index=ignore_index,
        num_threads=num_threads,
    )
    msg = str(excinfo.value)
    value, row = first
    assert names_number(msg, value), f"message {msg!r} does not name the bad value {value}"
    assert names_number(msg, row), f"message {msg!r} does not name the row {row}"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "out=logits"])
def test_bad_class_index_leaves_out_untouched(frontend, reduction, in_place, rng):
    logits = rng.standard_normal((500, 6))
    target = rng.integers(0, 6, size=500)
    target[321] = 6
    out = logits if in_place else np.full_like(logits, 3.5)
    snapshot = logits.copy()
    excinfo = raises_unmodified(
        ValueError, frontend.cross_entropy_with_grad, logits, target, out=out, reduction=reduction
    )
    assert names_number(str(excinfo.value), 321)
    assert logits.tobytes() == snapshot.tobytes()


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize("label", [5, -1, 7])
def test_bad_class_index_single_sample(frontend, name, label, rng):
    logits = rng.standard_normal(5)
    excinfo = raises_unmodified(ValueError, getattr(frontend, name), logits, label)
    assert names_number(str(excinfo.value), label)


# ---------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize("reduction", ["avg", "elementwise_mean", "", "Mean "])
def test_unknown_reduction(frontend, name, reduction, rng):
    excinfo = raises_unmodified(
        ValueError, getattr(frontend, name), *valid_args(name, rng), reduction=reduction
    )
    assert repr(reduction) in str(excinfo.value) or reduction in str(excinfo.value)


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize("smoothing", [-0.1, 1.0001, 2.0, np.nan, np.inf, -np.inf])
def test_label_smoothing_out_of_range(frontend, name, smoothing, rng):
    raises_unmodified(
        ValueError, getattr(frontend, name), *valid_args(name, rng), label_smoothing=smoothing
    )


@pytest.mark.parametrize("name", CE_NAMES)
@pytest.mark.parametrize("ignore_index", [0, 3, 100])
def test_prob_target_with_non_negative_ignore_index(frontend, name, ignore_index, rng):
    logits, probs = rng.standard_normal((4, 5)), rng.random((4, 5))
    raises_unmodified(ValueError, getattr(frontend, name), logits, probs, ignore_index=ignore_index)


# ---------------------------------------------------------------------------------------------
# out=


def _bad_outs(shape, dtype):
    """(id, out array) pairs, each wrong in one way, for a result of ``shape`` and ``dtype``."""
    other = np.float32 if dtype == np.float64 else np.float64
    readonly = np.zeros(shape, dtype)
    readonly.flags.writeable = False
    return [
        ("dtype", np.zeros(shape, other)),
        ("byteorder", np.zeros(shape, np.dtype(dtype).newbyteorder())),
        ("shape", np.zeros((shape[0] + 1, shape[1]), dtype)),
        ("transposed-shape", np.zeros(shape[::-1], dtype)),
        ("flat", np.zeros(shape[0] * shape[1], dtype)),
        ("readonly", readonly),
        ("fortran", np.zeros(shape, dtype, order="F")),
        ("strided", np.zeros((shape[0], 2 * shape[1]), dtype)[:, ::2]),
        ("negstride", np.zeros(shape, dtype)[::-1]),
    ]


BAD_OUT_IDS = [b[0] for b in _bad_outs((2, 3), np.float64)]


@pytest.mark.parametrize("name", OUT_NAMES)
@pytest.mark.parametrize("which", BAD_OUT_IDS)
@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.float16], ids=["float32", "float64", "float16"]
)
def test_bad_out(frontend, name, which, dtype, rng):
    shape = (4, 5)
    args = valid_args(name, rng, dtype, shape)
    out = dict(_bad_outs(shape, dtype))[which]
    if dtype == np.float16 and which == "dtype":
        out = np.zeros(shape, np.float32)  # float16 results need a float16 out
    excinfo = raises_unmodified(ValueError, getattr(frontend, name), *args, out=out)
    if which in ("shape", "transposed-shape", "flat"):
        assert_names_shapes(excinfo, out.shape, shape)
