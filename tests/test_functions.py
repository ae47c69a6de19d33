"""Every public function on every frontend against the extended-precision reference.

Dtypes, memory layouts, axes (negative, ``None``, N-D), result dtype and contiguity, ``out=``
(also in place), empty inputs and the inf/NaN rules of API.md.  Every call also checks that
its inputs were not modified.
"""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest
import reference as ref
from arrays import (
    ALL_NAMES,
    CASES,
    FLOAT_DTYPES,
    FLOAT_IDS,
    FORWARD_FUNCS,
    FUNC_IDS,
    FUNCS,
    KERNEL_FRONTENDS,
    LAYOUTS,
    OUT_FUNCS,
    ArrayOnly,
    Case,
    DLPackOnly,
    assert_bitwise_equal,
    assert_close,
    call_unmodified,
    ce_inputs,
    make_rng,
    normal,
    peak_traced_bytes,
    row_scale,
)

import csoftmax
from csoftmax._dispatch import FRONTENDS

float_dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------------
# Helpers


def scale_for(func, args, expected, axis):
    """The absolute-error unit per row: 1 for softmax / log_softmax (no cancellation), the
    largest |x| for logsumexp (m + log s may cancel), |g| and |dx| for the backward passes."""
    if func.name in ("softmax", "log_softmax"):
        return 1.0
    if func.reduces:
        return row_scale(args, axis, keepdims=False)
    return row_scale([args[0], expected], axis)


def check_array(result, expected, dtype, scale=1.0, what="result", factor=1.0):
    """A C-contiguous ndarray (or NumPy scalar for 0-d) of ``dtype`` close to ``expected``."""
    dtype = np.dtype(dtype)
    expected = np.asarray(expected)
    if expected.ndim == 0:
        assert isinstance(result, (np.ndarray, np.generic)), type(result)
    else:
        assert isinstance(result, np.ndarray), type(result)
        assert result.flags.c_contiguous, f"{what} is not C-contiguous"
    assert result.dtype == dtype, f"{what} dtype {result.dtype}, expected {dtype}"
    assert np.shape(result) == expected.shape, f"{what} shape {np.shape(result)}"
    assert_close(result, expected, dtype, scale, what=what, factor=factor)


def run_func(frontend, func, case, dtype, rng, layout="C"):
    x = case.values(rng)
    args = tuple(LAYOUTS[layout](a.astype(dtype)) for a in func.inputs(x, case.axis, rng))
    result = call_unmodified(getattr(frontend, func.name), *args, axis=case.axis)
    expected = func.expected(args, case.axis)
    check_array(result, expected, dtype, scale_for(func, args, expected, case.axis))
    assert np.shape(result) == func.result_shape(x.shape, case.axis)


def check_loss(loss, expected, dtype, reduction, what="loss"):
    """mean/sum: a NumPy scalar of the logits' dtype; none: an ndarray."""
    dtype = np.dtype(dtype)
    if reduction != "none":
        assert isinstance(loss, np.generic), f"{what}: {type(loss)} is not a NumPy scalar"
    check_array(loss, expected, dtype, what=what)


# ---------------------------------------------------------------------------------------------
# The module surface


def _api_signatures():
    def softmax(x, axis=-1, *, out=None, num_threads=None): ...
    def logsumexp(x, axis=-1, *, num_threads=None): ...
    def softmax_backward(grad_output, output, axis=-1, *, out=None, num_threads=None): ...
    def cross_entropy(
        logits,
        target,
        *,
        weight=None,
        ignore_index=-100,
        reduction="mean",
        label_smoothing=0.0,
        num_threads=None,
    ): ...
    def cross_entropy_with_grad(
        logits,
        target,
        *,
        weight=None,
        ignore_index=-100,
        reduction="mean",
        label_smoothing=0.0,
        out=None,
        num_threads=None,
    ): ...

    sigs = {
        "softmax": softmax,
        "log_softmax": softmax,
        "logsumexp": logsumexp,
        "softmax_backward": softmax_backward,
        "log_softmax_backward": softmax_backward,
        "cross_entropy": cross_entropy,
        "cross_entropy_with_grad": cross_entropy_with_grad,
    }
    return {name: _params(fn) for name, fn in sigs.items()}


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


API_SIGNATURES = _api_signatures()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_signatures(name, frontend):
    """The API.md signature (extra keyword-only options with defaults may follow it), the
    same for the public function, every frontend and the NumPy twin."""
    public = _params(getattr(csoftmax, name))
    assert _params(getattr(frontend, name)) == public
    assert _params(getattr(csoftmax.slow, name)) == public
    api = API_SIGNATURES[name]
    assert [p for p in public if p[0] in {a[0] for a in api}] == api, public
    extras = [p for p in public if p not in api]
    assert all(kind == inspect.Parameter.KEYWORD_ONLY for _, kind, _ in extras), extras
    assert all(default is not inspect.Parameter.empty for *_, default in extras), extras


def test_module_surface():
    assert isinstance(csoftmax.__version__, str) and csoftmax.__version__
    assert csoftmax.BACKEND in ("cython", "numpy")
    assert csoftmax.BACKEND in FRONTENDS
    for name in ("set_num_threads", "get_num_threads", "show_config", *ALL_NAMES):
        assert callable(getattr(csoftmax, name)), name


@pytest.mark.parametrize("name", ALL_NAMES)
def test_public_functions_use_the_active_backend(name, rng):
    logits, target, _ = ce_inputs(6, 5, rng)
    grad = rng.standard_normal((6, 5))
    args = {
        "softmax_backward": (grad, ref.softmax(logits).astype(np.float64)),
        "log_softmax_backward": (grad, ref.log_softmax(logits).astype(np.float64)),
        "cross_entropy": (logits, target),
        "cross_entropy_with_grad": (logits, target),
    }.get(name, (logits,))
    public = getattr(csoftmax, name)(*args)
    active = getattr(FRONTENDS[csoftmax.BACKEND], name)(*args)
    if not isinstance(public, tuple):
        public, active = (public,), (active,)
    for p, a in zip(public, active):
        assert_bitwise_equal(p, a, name)


# ---------------------------------------------------------------------------------------------
# The softmax family against the reference

_FAMILY_PARAMS = [
    pytest.param(f, c, id=f"{f.name}-{c.id}")
    for f, c in itertools.product(FUNCS, CASES)
    if c.finite or not f.backward  # API.md gives no inf/NaN rules for the backward passes
]


@pytest.mark.parametrize(("func", "case"), _FAMILY_PARAMS)
@float_dtypes
def test_matches_reference(frontend, func, case, dtype, rng):
    run_func(frontend, func, case, dtype, rng)


_LAYOUT_CASES = [
    Case("2d", (6, 7), -1),
    Case("2d-axis0", (6, 7), 0),
    Case("3d", (3, 4, 5), 1),
    Case("2d-special", (8, 5), -1, "special"),
]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(
    ("func", "case"),
    [
        pytest.param(f, c, id=f"{f.name}-{c.id}")
        for f, c in itertools.product(FUNCS, _LAYOUT_CASES)
        if c.finite or not f.backward
    ],
)
@float_dtypes
def test_layouts(frontend, func, case, layout, dtype, rng):
    run_func(frontend, func, case, dtype, rng, layout)


@pytest.mark.parametrize("func", FUNCS, ids=FUNC_IDS)
def test_float16_computed_in_float32(frontend, func, rng):
    case = Case("2d", (5, 9), -1)
    x = case.values(rng)
    args = tuple(a.astype(np.float16) for a in func.inputs(x, -1, rng))
    result = call_unmodified(getattr(frontend, func.name), *args)
    expected = func.expected(args, -1)
    check_array(result, expected, np.float16, scale_for(func, args, expected, -1))


@pytest.mark.parametrize("func", FORWARD_FUNCS, ids=[f.name for f in FORWARD_FUNCS])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_])
def test_integer_and_bool_become_float64(frontend, func, dtype, rng):
    x = rng.integers(0, 6, size=(4, 5)).astype(dtype)
    result = call_unmodified(getattr(frontend, func.name), x, axis=-1)
    expected = func.expected((x,), -1)
    check_array(result, expected, np.float64, scale_for(func, (x,), expected, -1))


@pytest.mark.parametrize("func", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    "wrap", [list, ArrayOnly, DLPackOnly], ids=["list", "__array__", "__dlpack__"]
)
def test_array_likes(frontend, func, wrap, rng):
    x = Case("2d", (4, 6), -1).values(rng)
    args = func.inputs(x, -1, rng)
    wrapped = [a.tolist() if wrap is list else wrap(a) for a in args]
    result = getattr(frontend, func.name)(*wrapped)
    expected = func.expected(args, -1)
    check_array(result, expected, np.float64, scale_for(func, args, expected, -1))


@pytest.mark.parametrize("func", FORWARD_FUNCS, ids=[f.name for f in FORWARD_FUNCS])
def test_special_values_follow_api(frontend, func):
    """The inf/NaN rules of API.md, spelt out row by row (the reference encodes the same)."""
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [1.0, -inf, 2.0, -inf],  # masked classes: probability 0
            [-inf, -inf, -inf, -inf],  # softmax NaN, logsumexp -inf
            [1.0, inf, 2.0, 3.0],  # softmax NaN, logsumexp +inf
            [1.0, nan, 2.0, 3.0],  # NaN everywhere
            [inf, -inf, 0.0, 1.0],  # softmax NaN, logsumexp +inf
            [inf, nan, 0.0, 1.0],  # NaN (NaN wins over +inf)
            [-inf, 0.5, -inf, -inf],  # one survivor: probability 1
        ]
    )
    result = call_unmodified(getattr(frontend, func.name), x)
    if func.name == "logsumexp":
        np.testing.assert_array_equal(result[1:], [-inf, inf, nan, inf, nan, 0.5])
        assert np.isclose(result[0], np.log(np.exp(1.0) + np.exp(2.0)), rtol=1e-14)
        return
    p = result if func.name == "softmax" else np.exp(result)
    assert np.all(np.isnan(result[1:6]))
    np.testing.assert_array_equal(p[0, [1, 3]], 0.0)
    np.testing.assert_allclose(p[0].sum(), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(p[6], [0.0, 1.0, 0.0, 0.0])
    if func.name == "log_softmax":
        np.testing.assert_array_equal(result[0, [1, 3]], -inf)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0), (2, 0, 3)])
@pytest.mark.parametrize("func", FUNCS, ids=FUNC_IDS)
@float_dtypes
def test_empty(frontend, func, shape, dtype):
    x = np.zeros(shape, dtype=dtype)
    args = (x, x) if func.backward else (x,)
    result = getattr(frontend, func.name)(*args)
    expect_shape = func.result_shape(shape, -1)
    assert result.shape == expect_shape and result.dtype == dtype
    if func.reduces:  # logsumexp over an empty axis is -inf
        assert np.all(result == -np.inf) if shape[-1] == 0 else result.size == 0


@pytest.mark.parametrize("func", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize("axis", [-1, 0, None])
def test_zero_dimensional(frontend, func, axis):
    """A 0-d x has no axis to run along: either a ValueError, or (as SciPy and PyTorch do)
    the one-element answer -- with x's shape ``()``, never a reshaped array."""
    x = np.array(0.75)
    args = (np.array(2.0), np.array(1.0)) if func.backward else (x,)
    try:
        result = getattr(frontend, func.name)(*args, axis=axis)
    except ValueError:
        return
    expected = func.expected(tuple(a.reshape(1) for a in args), -1)
    assert np.shape(result) == (), f"{func.name} of a 0-d array gave shape {np.shape(result)}"
    np.testing.assert_allclose(result, np.reshape(expected, ()), rtol=1e-15)


_SCIPY_PARAMS = [
    pytest.param(name, c, id=f"{name}-{c.id}")
    for name in ("softmax", "log_softmax", "logsumexp")
    for c in CASES
    # SciPy's softmax has no NaN-row rule for +inf, and SciPy fails on some empty inputs
    if (c.finite or name == "logsumexp") and 0 not in c.shape
]


@pytest.mark.parametrize(("name", "case"), _SCIPY_PARAMS)
def test_like_scipy(frontend, name, case, rng):
    """softmax / log_softmax / logsumexp as ``scipy.special`` computes them (axis=None too)."""
    special = pytest.importorskip("scipy.special")
    x = case.values(rng)
    with np.errstate(all="ignore"):
        theirs = getattr(special, name)(x, axis=case.axis)
    ours = getattr(frontend, name)(x, axis=case.axis)
    scale = row_scale([x], case.axis, keepdims=False) if name == "logsumexp" else 1.0
    assert_close(ours, theirs, np.float64, scale, what=name, factor=4.0)


# (x, b, where) of logsumexp with factors at the edges: NaN under a zero factor or a mask
# (dropped with its term), parts that cancel exactly (-inf) or are both +inf (NaN)
_SCALED_EDGES = [
    ([0.0, np.nan], [1.0, 0.0], None),
    ([0.0, np.nan], [1.0, 1.0], [True, False]),
    ([np.nan, 2.0, 1.0], [0.0, -1.0, 0.5], None),
    ([np.inf, np.inf], [1.0, -1.0], None),
    ([0.0, 0.0], [np.inf, -np.inf], None),
    ([1.0, 1.0], [1.0, -1.0], None),
    ([-np.inf, -np.inf], [1.0, -1.0], None),
    ([np.inf, 3.0], [2.0, -1.0], None),
    ([0.0, np.nan], [np.nan, 1.0], None),
]


@pytest.mark.parametrize(("x", "b", "where"), _SCALED_EDGES)
def test_logsumexp_scaled_edges_like_scipy(frontend, x, b, where):
    """logsumexp with ``b`` (and ``return_sign``) at the edges as ``scipy.special`` gives it,
    ``where=`` as dropping the masked entries."""
    special = pytest.importorskip("scipy.special")
    x, b = np.array(x), np.array(b)
    keep = np.ones(x.shape, bool) if where is None else np.array(where)
    with np.errstate(all="ignore"):
        want = special.logsumexp(x[keep], b=b[keep], return_sign=True)
    got = frontend.logsumexp(x, b=b, where=None if where is None else keep, return_sign=True)
    for g, w in zip(got, want):  # NaN where SciPy has NaN, inf where it has inf
        np.testing.assert_allclose(g, w, rtol=4 * np.finfo(np.float64).eps, atol=0)


def _scaled_cases(rng, dtype):
    """(what, x, b) of logsumexp with factors over the last axis: one row of factors for
    all rows (positive; mixed signs with zeros over NaN and +inf logits), factors of x's
    shape, a (rows, 1) column, 1-D x."""
    x = (rng.standard_normal((40, 300)) * 4).astype(dtype)
    x[3, ::7] = -np.inf
    x[5, 10] = np.nan
    x[6, 11] = np.inf
    mixed = rng.standard_normal(300).astype(dtype)
    mixed[10:12] = 0  # drops row 5's NaN and row 6's +inf
    return [("positive row", x, (rng.random(300) + 0.1).astype(dtype)),
            ("mixed row", x, mixed),
            ("x's shape", x, rng.standard_normal(x.shape).astype(dtype)),
            ("column", x, rng.standard_normal((40, 1)).astype(dtype)),
            ("1-D", x[0], mixed)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_logsumexp_scaled_rows(frontend, dtype):
    """logsumexp(x, b=b): the signed sum sign * exp(r - M) within rounding of the float64
    sum of b exp(x - M) (M the row's largest kept logit), measured against the sum of
    the terms' magnitudes (what cancellation leaves); the sign SciPy's where the sum is not
    within that rounding of 0; keepdims and return_sign shapes; NaN where a kept logit is
    NaN."""
    special = pytest.importorskip("scipy.special")
    rng = make_rng("scaled-rows", np.dtype(dtype).name)
    tol = 2e-6 if dtype == np.float32 else 4e-15
    for what, x, b in _scaled_cases(rng, dtype):
        r, sign = frontend.logsumexp(x, b=b, return_sign=True)
        x64, b64 = np.broadcast_arrays(x.astype(np.float64), b.astype(np.float64))
        with np.errstate(all="ignore"):
            want_r, want_sign = special.logsumexp(x64, axis=-1, b=b64, return_sign=True)
            kept = b64 != 0
            m = np.where(kept, x64, -np.inf).max(axis=-1, keepdims=True)
            terms = np.where(kept, b64 * np.exp(x64 - m), 0.0)
            s, size = terms.sum(axis=-1), np.abs(terms).sum(axis=-1)
            got = sign * np.exp(r.astype(np.float64) - m[..., 0])
        assert r.dtype == dtype and r.shape == x.shape[:-1], what
        nan = np.isnan(want_r)
        np.testing.assert_array_equal(np.isnan(r), nan, what)
        np.testing.assert_array_less(np.abs(got - s)[~nan], (tol * size + 1e-300)[~nan], what)
        clear = ~nan & (np.abs(s) > 16 * tol * size)
        np.testing.assert_array_equal(sign[clear], want_sign[clear], what)
        kd = frontend.logsumexp(x, b=b, keepdims=True)
        assert kd.shape == x.shape[:-1] + (1,), what
        plain = frontend.logsumexp(x, b=b)
        np.testing.assert_array_equal(np.isnan(plain), nan | (sign < 0), what)


def test_logsumexp_scaled_no_temporaries(kernel_frontend):
    """The compiled kernels compute logsumexp(x, b=row) a row at a time: nothing of x's
    size is allocated (the NumPy formulation made eight such arrays)."""
    if kernel_frontend.kernels.__name__.endswith("_numpy_backend"):
        pytest.skip("the NumPy twin computes with arrays of x's size")
    rng = make_rng("scaled-memory")
    x = rng.standard_normal((2000, 1000))
    b = rng.standard_normal(1000)
    kernel_frontend.logsumexp(x, b=b)
    peak = peak_traced_bytes(lambda: kernel_frontend.logsumexp(x, b=b, return_sign=True))
    assert peak < x.nbytes // 16, f"peak {peak} bytes traced for a {x.nbytes}-byte input"


def test_weighted_mean_denominator_exact(frontend):
    """The "mean" divides by the summed class weight of the counted rows, summed to within an
    ulp or two (a plain running sum of the 200000 weights below was about 600 ulp off)."""
    rng = make_rng("weighted-total")
    n = 200_000
    x = rng.standard_normal((n, 3)) * 10
    t = rng.integers(0, 3, size=n)
    t[::7] = -100
    w = rng.random(3)
    rows = frontend.cross_entropy(x, t, weight=w, reduction="none")
    kept = t[t != -100]
    exact = math.fsum(rows.tolist()) / math.fsum(w[kept].tolist())
    got = frontend.cross_entropy(x, t, weight=w)
    assert abs(got - exact) <= 4 * np.spacing(exact)


# Row lengths around every SIMD width and tile size, on every instruction-set variant
SWEEP_C = [*range(1, 41), 47, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1025, 4099]


def sweep_values(n, c, rng):
    """Normal rows, some masked (-inf) entries, and (for n > 2) a NaN row and an all -inf row."""
    x = normal((n, c), rng)
    x[rng.random((n, c)) < 0.05] = -np.inf
    x[:, rng.integers(0, c)] = rng.standard_normal(n)  # keep a finite entry in every row
    if n > 2:
        x[1, rng.integers(0, c)] = np.nan
        x[2] = -np.inf
    return x


@pytest.mark.parametrize("func", FUNCS, ids=FUNC_IDS)
@float_dtypes
def test_row_length_sweep(kernel_frontend, func, dtype):
    for c, n in itertools.product(SWEEP_C, (1, 5, 37)):
        rng = make_rng("sweep", func.name, c, n)
        x = sweep_values(n, c, rng) if not func.backward else normal((n, c), rng)
        args = tuple(a.astype(dtype) for a in func.inputs(x, -1, rng))
        result = getattr(kernel_frontend, func.name)(*args)
        expected = func.expected(args, -1)
        check_array(
            result,
            expected,
            dtype,
            scale_for(func, args, expected, -1),
            what=f"{func.name} ({n}, {c})",
        )


@pytest.mark.parametrize("kind", ["int", "prob"])
@float_dtypes
def test_cross_entropy_row_length_sweep(kernel_frontend, kind, dtype):
    for c, n in itertools.product(SWEEP_C, (1, 5, 37)):
        rng = make_rng("ce-sweep", kind, c, n)
        logits, target, w = ce_inputs(
            n, c, rng, kind=kind, weight=c % 2 == 0, ignore_index=-100 if kind == "int" else None
        )
        logits = logits.astype(dtype)
        target = target.astype(dtype) if kind == "prob" else target
        w = None if w is None else w.astype(dtype)
        for reduction, smoothing in (("mean", 0.0), ("none", 0.15)):
            kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
            exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, **kw)
            loss, grad = kernel_frontend.cross_entropy_with_grad(logits, target, **kw)
            what = f"({n}, {c}) {reduction} {smoothing}"
            check_loss(loss, exp_loss, dtype, reduction, what=f"loss {what}")
            check_array(grad, exp_grad, dtype, what=f"grad {what}")


@pytest.mark.parametrize("c", [256, 1000, 4099, 20000])
@float_dtypes
def test_next_row_prefetch_same_bits(kernel_frontend, c, dtype):
    """Rows of 1 KB or more prefetch the next row as they go (the backward functions' writing
    pass in spans, also under a `where=` mask that keeps all or a prefix of a row; the
    probability targets' pass): each row of a 3-row call has the bits of the same row computed
    alone, which has no next row and runs the passes unsplit."""
    rng = make_rng("prefetch", c)
    x, g = normal((3, c), rng).astype(dtype), normal((3, c), rng).astype(dtype)
    y = rng.random((3, c)).astype(dtype)
    y /= y.sum(axis=1, keepdims=True)
    prefix = np.arange(c) < c - c // 10  # every row keeps its first 90 %
    keep_all = np.ones(c, dtype=bool)
    f = kernel_frontend
    cases = {
        "softmax_backward": lambda s: f.softmax_backward(g[s], f.softmax(x[s]), num_threads=1),
        "log_softmax_backward": lambda s: f.log_softmax_backward(
            g[s], f.log_softmax(x[s]), num_threads=1
        ),
        "prob loss": lambda s: f.cross_entropy(x[s], y[s], reduction="none", num_threads=1),
    }
    for name, mask in (("prefix", prefix), ("all kept", keep_all)):
        cases[f"softmax_backward where {name}"] = lambda s, m=mask: f.softmax_backward(
            g[s], f.softmax(x[s], where=m), where=m, num_threads=1
        )
        cases[f"log_softmax_backward where {name}"] = lambda s, m=mask: f.log_softmax_backward(
            g[s], f.log_softmax(x[s], where=m), where=m, num_threads=1
        )
    for smoothing in (0.0, 0.1):
        cases[f"prob loss+grad {smoothing}"] = lambda s, a=smoothing: np.concatenate(
            [
                np.atleast_1d(v).ravel()
                for v in f.cross_entropy_with_grad(
                    x[s], y[s], reduction="none", label_smoothing=a, num_threads=1
                )
            ]
        )
    for what, call in cases.items():
        whole = call(slice(None))
        rows = [call(slice(i, i + 1)) for i in range(3)]
        if what.startswith("prob loss+grad"):  # losses first, then the gradient rows
            want = np.concatenate([r[:1] for r in rows] + [r[1:] for r in rows])
        else:
            want = np.concatenate([np.atleast_1d(r).ravel() for r in rows])
        assert_bitwise_equal(np.ravel(whole), want, f"{what}, {c} columns")


# ---------------------------------------------------------------------------------------------
# out=

_OUT_CASES = [
    Case("2d", (5, 7), -1),
    Case("3d-axis1", (3, 4, 5), 1),
    Case("2d-axisNone", (5, 7), None),
    Case("empty-rows", (0, 5), -1),
    Case("special", (8, 5), -1, "special"),
]


@pytest.mark.parametrize(
    ("func", "case"),
    [
        pytest.param(f, c, id=f"{f.name}-{c.id}")
        for f, c in itertools.product(OUT_FUNCS, _OUT_CASES)
        if c.finite or not f.backward
    ],
)
@float_dtypes
def test_out(frontend, func, case, dtype, rng):
    x = case.values(rng)
    args = tuple(a.astype(dtype) for a in func.inputs(x, case.axis, rng))
    out = np.full(x.shape, 12345.0, dtype=dtype)
    result = call_unmodified(getattr(frontend, func.name), *args, axis=case.axis, out=out)
    assert result is out
    expected = func.expected(args, case.axis)
    check_array(out, expected, dtype, scale_for(func, args, expected, case.axis))


@pytest.mark.parametrize(
    "func", [f for f in OUT_FUNCS if not f.backward], ids=["softmax", "log_softmax"]
)
@pytest.mark.parametrize("axis", [-1, 0, 1, None])
@pytest.mark.parametrize("kind", ["normal", "special"])
@float_dtypes
def test_out_in_place(frontend, func, axis, kind, dtype, rng):
    case = Case("in-place", (9, 6), axis, kind)
    x = np.ascontiguousarray(case.values(rng), dtype=dtype)
    expected = func.expected((x,), axis)
    result = getattr(frontend, func.name)(x, axis, out=x)
    assert result is x
    check_array(x, expected, dtype)


@pytest.mark.parametrize("func", OUT_FUNCS, ids=[f.name for f in OUT_FUNCS])
def test_out_float16(frontend, func, rng):
    x = Case("2d", (3, 5), -1).values(rng)
    args = tuple(a.astype(np.float16) for a in func.inputs(x, -1, rng))
    out = np.empty((3, 5), dtype=np.float16)
    assert getattr(frontend, func.name)(*args, out=out) is out
    expected = func.expected(args, -1)
    check_array(out, expected, np.float16, scale_for(func, args, expected, -1))


@pytest.mark.parametrize(
    "name",
    ["softmax", "log_softmax", "cross_entropy_with_grad-int", "cross_entropy_with_grad-prob"],
)
@float_dtypes
def test_in_place_allocates_nothing_of_input_size(frontend, name, dtype, rng):
    """``out=x`` / ``out=logits`` work in place "with no other array of that size allocated"."""
    n, c = 2000, 300
    kind = name.rsplit("-", 1)[-1]
    logits, target, _ = ce_inputs(n, c, rng, kind="prob" if kind == "prob" else "int")
    x = logits.astype(dtype)
    target = target.astype(dtype) if kind == "prob" else target
    if name.startswith("cross_entropy"):

        def call():
            frontend.cross_entropy_with_grad(x, target, out=x)
    else:

        def call():
            getattr(frontend, name)(x, out=x)

    call()  # warm up any lazy imports or caches
    peak = peak_traced_bytes(call)
    assert peak < x.nbytes // 4, f"peak {peak} bytes traced for a {x.nbytes}-byte input"


# ---------------------------------------------------------------------------------------------
# Cross-entropy against the reference

_CE_OPTIONS = list(
    itertools.product(("int", "prob"), (False, True), ("none", "hit"), REDUCTIONS, (0.0, 0.1, 1.0))
)


def _ce_ignore_index(kind, ignore):
    if ignore == "none":
        return -100
    return 1 if kind == "int" else -1  # an in-range class; negative (no effect) for probs


@pytest.mark.parametrize(
    ("kind", "weighted", "ignore", "reduction", "smoothing"),
    _CE_OPTIONS,
    ids=["-".join(map(str, o)) for o in _CE_OPTIONS],
)
@float_dtypes
def test_cross_entropy_matches_reference(
    frontend, kind, weighted, ignore, reduction, smoothing, dtype, rng
):
    n, c = 13, 6
    ignore_index = _ce_ignore_index(kind, ignore)
    logits, target, w = ce_inputs(
        n,
        c,
        rng,
        kind=kind,
        weight=weighted,
        ignore_index=ignore_index if ignore == "hit" else None,
    )
    logits = logits.astype(dtype)
    target = target.astype(dtype) if kind == "prob" else target
    w = None if w is None else w.astype(dtype)
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, **kw)
    loss, grad = call_unmodified(frontend.cross_entropy_with_grad, logits, target, **kw)
    check_loss(loss, exp_loss, dtype, reduction)
    check_array(grad, exp_grad, dtype, what="grad")
    loss_only = call_unmodified(frontend.cross_entropy, logits, target, **kw)
    check_loss(loss_only, exp_loss, dtype, reduction, what="cross_entropy loss")
    if ignore == "hit" and kind == "int":
        assert np.all(grad[::4] == 0)
        if reduction == "none":
            assert np.all(loss[::4] == 0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["int", "prob"])
@float_dtypes
def test_cross_entropy_layouts(frontend, layout, kind, dtype, rng):
    n, c = 11, 7
    logits, target, w = ce_inputs(
        n, c, rng, kind=kind, weight=True, ignore_index=-100 if kind == "int" else None
    )
    logits = logits.astype(dtype)
    target = target.astype(dtype) if kind == "prob" else target
    w = w.astype(dtype)
    args = [LAYOUTS[layout](a) for a in (logits, target, w)]
    for reduction in REDUCTIONS:
        kw = dict(weight=args[2], reduction=reduction, label_smoothing=0.05)
        exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, **kw)
        loss, grad = call_unmodified(frontend.cross_entropy_with_grad, args[0], args[1], **kw)
        check_loss(loss, exp_loss, dtype, reduction)
        check_array(grad, exp_grad, dtype, what="grad")
        check_loss(
            call_unmodified(frontend.cross_entropy, args[0], args[1], **kw),
            exp_loss,
            dtype,
            reduction,
        )


INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@pytest.mark.parametrize("tdtype", INT_DTYPES, ids=[np.dtype(t).name for t in INT_DTYPES])
def test_cross_entropy_integer_target_dtypes(frontend, tdtype, rng):
    signed = np.dtype(tdtype).kind == "i"
    logits, target, _ = ce_inputs(10, 5, rng, ignore_index=-100 if signed else None)
    target = target.astype(tdtype)
    for reduction in REDUCTIONS:
        exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, reduction=reduction)
        loss, grad = call_unmodified(
            frontend.cross_entropy_with_grad, logits, target, reduction=reduction
        )
        check_loss(loss, exp_loss, np.float64, reduction)
        check_array(grad, exp_grad, np.float64, what="grad")


@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize(
    "wrap",
    [lambda a: a.tolist(), ArrayOnly, DLPackOnly],
    ids=["list", "__array__", "__dlpack__"],
)
def test_cross_entropy_array_likes(frontend, kind, wrap, rng):
    logits, target, w = ce_inputs(6, 4, rng, kind=kind, weight=True)
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, weight=w)
    loss, grad = frontend.cross_entropy_with_grad(wrap(logits), wrap(target), weight=wrap(w))
    check_loss(loss, exp_loss, np.float64, "mean")
    check_array(grad, exp_grad, np.float64, what="grad")


@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float32_loss_sums_in_double(frontend, kind, reduction, rng):
    """ "sums are accumulated in double precision": over 200,000 float32 rows the reduced loss
    is still within a couple of float32 ulps of the exact value."""
    logits, target, _ = ce_inputs(200_000, 4, rng, kind=kind)
    logits = logits.astype(np.float32)
    target = target.astype(np.float32) if kind == "prob" else target
    exact = ref.cross_entropy(logits, target, reduction=reduction)
    loss = frontend.cross_entropy(logits, target, reduction=reduction)
    assert loss.dtype == np.float32
    np.testing.assert_allclose(float(loss), float(exact), rtol=3e-7)


@pytest.mark.parametrize("c", [2, 10, 40])
@pytest.mark.parametrize("kind", ["int", "prob"])
def test_cross_entropy_sum_of_row_losses(kernel_frontend, kind, c, rng):
    """The kernels add up the row losses themselves (tile by tile for short rows, in an order
    fixed by the shape): "sum" and "mean" agree with the "none" losses summed exactly, and a
    NaN row makes them NaN, an ignored row counts 0."""
    logits, target, _ = ce_inputs(5000, c, rng, kind=kind, ignore_index=-100)
    none = kernel_frontend.cross_entropy(logits, target, reduction="none", ignore_index=-100)
    total = kernel_frontend.cross_entropy(logits, target, reduction="sum", ignore_index=-100)
    np.testing.assert_allclose(total, math.fsum(none), rtol=1e-14)
    counted = np.sum(target != -100) if kind == "int" else len(target)
    mean = kernel_frontend.cross_entropy(logits, target, ignore_index=-100)
    np.testing.assert_allclose(mean, math.fsum(none) / counted, rtol=1e-13)
    logits[1001, 1] = np.nan
    assert np.isnan(kernel_frontend.cross_entropy(logits, target, reduction="sum"))


@pytest.mark.parametrize("c", [40, 1000, 20000])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@float_dtypes
def test_cross_entropy_in_place_same_bits(kernel_frontend, c, weighted, dtype, rng):
    """out=logits gives the bits of a separate out: the smoothing sums are computed by the same
    loop either way, also where a float32 block sum overflows and is summed again in double."""
    logits = (rng.standard_normal((6, c)) * 4).astype(dtype)
    logits[1, : min(c, 600)] = np.finfo(dtype).max / 2  # terms whose float block sum overflows
    logits[1, 3] = -np.finfo(dtype).max / 2
    target = rng.integers(0, c, size=6)
    w = rng.uniform(0.5, 2, size=c).astype(dtype) if weighted else None
    kw = dict(weight=w, label_smoothing=0.1, reduction="none")
    with np.errstate(all="ignore"):
        loss, grad = kernel_frontend.cross_entropy_with_grad(logits, target, **kw)
        x = logits.copy()
        loss_in, grad_in = kernel_frontend.cross_entropy_with_grad(x, target, out=x, **kw)
    assert_bitwise_equal(grad_in, grad, "in-place gradient")
    assert_bitwise_equal(loss_in, loss, "in-place loss")
    assert np.isfinite(loss[1]) or dtype == np.float64


@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_cross_entropy_mean_counts_rows_over_threads(kernel_frontend, num_threads, rng):
    """The label check counts the kept rows chunk by chunk over threads (200,000 labels)."""
    logits, target, _ = ce_inputs(200_000, 2, rng, ignore_index=-100)
    target[150_001::7] = -100
    none = kernel_frontend.cross_entropy(logits, target, reduction="none", num_threads=num_threads)
    mean = kernel_frontend.cross_entropy(logits, target, num_threads=num_threads)
    np.testing.assert_allclose(mean, math.fsum(none) / np.sum(target != -100), rtol=1e-13)


@pytest.mark.parametrize(
    "target",
    [3, np.int64(3), np.int32(3), np.array(3), "prob"],
    ids=["int", "np.int64", "np.int32", "0-d array", "prob"],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@float_dtypes
def test_cross_entropy_single_sample(frontend, target, reduction, dtype, rng):
    c = 6
    logits = (rng.standard_normal(c) * 2).astype(dtype)
    if isinstance(target, str):
        target = rng.random(c).astype(dtype)
    kw = dict(
        weight=np.linspace(0.5, 1.5, c).astype(dtype), reduction=reduction, label_smoothing=0.1
    )
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, **kw)
    loss, grad = call_unmodified(frontend.cross_entropy_with_grad, logits, target, **kw)
    assert np.shape(loss) == ()
    check_array(loss, exp_loss, dtype, what="loss")
    check_array(grad, exp_grad, dtype, what="grad")
    assert grad.shape == (c,)
    check_array(frontend.cross_entropy(logits, target, **kw), exp_loss, dtype, what="loss")


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@float_dtypes
def test_cross_entropy_special_values(frontend, smoothing, dtype):
    inf, nan = np.inf, np.nan
    logits = np.array(
        [
            [1.0, -inf, 0.5, -inf, 2.0],  # masked classes, target not masked: finite
            [1.0, 0.0, 0.5, -inf, 2.0],  # the target class itself masked: +inf loss
            [1.0, nan, 0.5, 0.0, 2.0],  # NaN row
            [1.0, inf, 0.5, 0.0, 2.0],  # +inf row
            [-inf, -inf, -inf, -inf, -inf],  # all -inf
            [nan, nan, inf, -inf, 0.0],  # ignored garbage rows: exactly 0 loss and grad
            [inf, inf, inf, inf, inf],
            [-inf, -inf, -inf, -inf, -inf],
            [0.3, -1.0, 0.2, 0.1, 0.0],  # plain
        ],
        dtype=dtype,
    )
    target = np.array([4, 3, 0, 0, 0, -100, -100, -100, 2])
    kw = dict(reduction="none", label_smoothing=smoothing)
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, **kw)
    loss, grad = call_unmodified(frontend.cross_entropy_with_grad, logits, target, **kw)
    check_array(loss, exp_loss, dtype, what="loss")
    check_array(grad, exp_grad, dtype, what="grad")
    # A masked class has probability 0, so zero gradient; with smoothing it is also a (tiny)
    # target, so the loss is +inf, as in PyTorch.
    np.testing.assert_allclose(grad[0, [1, 3]], -smoothing / 5, rtol=1e-6)  # a_k = 0: -y'_k
    assert np.isfinite(loss[0]) if smoothing == 0 else loss[0] == inf
    assert loss[1] == inf and np.all(np.isfinite(grad[1]))
    assert np.all(np.isnan(loss[2:5])) and np.all(np.isnan(grad[2:5]))
    assert np.all(loss[5:8] == 0) and np.all(grad[5:8] == 0)
    assert not np.any(np.signbit(grad[5:8])), "ignored rows must be +0"
    # Reductions over finite rows stay finite whatever garbage the ignored rows hold.
    keep = [0, 5, 6, 7, 8] if smoothing == 0 else [5, 6, 7, 8]
    for reduction in ("mean", "sum"):
        kw = dict(reduction=reduction, label_smoothing=smoothing)
        exp_loss, exp_grad = ref.cross_entropy_with_grad(logits[keep], target[keep], **kw)
        loss, grad = frontend.cross_entropy_with_grad(logits[keep], target[keep], **kw)
        assert np.isfinite(loss)
        check_loss(loss, exp_loss, dtype, reduction)
        check_array(grad, exp_grad, dtype, what="grad")
        check_loss(
            frontend.cross_entropy(logits[keep], target[keep], **kw), exp_loss, dtype, reduction
        )


@pytest.mark.parametrize("c", [1, 2, 3, 10, 31, 32, 47, 63])
@pytest.mark.parametrize(("weighted", "smoothing"), [(False, 0.0), (True, 0.0), (True, 0.2)])
@float_dtypes
def test_cross_entropy_short_rows_over_tiles(kernel_frontend, c, weighted, smoothing, dtype):
    """Short rows (float32 C <= 63, float64 C <= 31) run a tile of rows at a time, with rows
    as vector lanes (and a code path of its own for C = 2): several tiles plus a partial
    one, special rows in the first and the last tile, ignored rows, in place and
    loss-only."""
    n = 2 * (1024 // c) + 7
    rng = make_rng("ce-short-tiles", c, weighted, smoothing)
    logits, target, w = ce_inputs(n, c, rng, ignore_index=-100, weight=weighted)
    for r in (1, n - 5):
        target[r : r + 4] = np.maximum(target[r : r + 4], 0)
        logits[r, rng.integers(0, c)] = np.nan
        logits[r + 1, rng.integers(0, c)] = np.inf
        logits[r + 2] = -np.inf
        logits[r + 3, target[r + 3]] = -np.inf if c > 1 else 0.0  # target masked: +inf loss
        logits[r + 4] = [np.nan, np.inf, -np.inf, 1.0][: c] + [0.0] * (c - 4)
        target[r + 4] = -100  # ignored garbage: exactly zero loss and gradient
    logits = logits.astype(dtype)
    w = None if w is None else w.astype(dtype)
    kw = dict(weight=w, reduction="none", label_smoothing=smoothing)
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, **kw)
    loss, grad = call_unmodified(kernel_frontend.cross_entropy_with_grad, logits, target, **kw)
    check_array(loss, exp_loss, dtype, what="loss")
    check_array(grad, exp_grad, dtype, what="grad")
    assert np.all(grad[target == -100] == 0) and np.all(loss[target == -100] == 0)
    check_array(kernel_frontend.cross_entropy(logits, target, **kw), exp_loss, dtype, what="loss")
    in_place = logits.copy()
    loss2, grad2 = kernel_frontend.cross_entropy_with_grad(in_place, target, out=in_place, **kw)
    assert grad2 is in_place
    assert_bitwise_equal(grad2, grad)
    assert_bitwise_equal(loss2, loss)
    for reduction in ("mean", "sum"):
        kw["reduction"] = reduction
        finite = np.isfinite(exp_loss) | (target == -100)
        exp_loss, _ = ref.cross_entropy_with_grad(logits[finite], target[finite], **kw)
        loss, _ = kernel_frontend.cross_entropy_with_grad(logits[finite], target[finite], **kw)
        check_loss(loss, exp_loss, dtype, reduction)


@pytest.mark.parametrize("c", [2, 3, 10, 17, 31, 47, 63])
@float_dtypes
def test_backward_tiles_give_each_row_its_own_bits(kernel_frontend, c, dtype):
    """softmax_backward (rows under 128 bytes) and log_softmax_backward (under 256 bytes)
    compute a tile of short rows at a time, rows as the lanes of transposed blocks: each
    row's gradient has the same bits wherever it sits in a tile (a call of that row alone,
    1-3 threads, out= either input), with NaN and infinite entries in some rows."""
    rng = make_rng("backward-tiles", c)
    n = 300                                 # tiles, and a last block with padding lanes
    g = (normal((n, c), rng) * 3).astype(dtype)
    g[5, 0], g[9, -1] = np.nan, np.inf
    x = normal((n, c), rng).astype(dtype)
    for name, out in (("softmax_backward", kernel_frontend.softmax(x)),
                      ("log_softmax_backward", kernel_frontend.log_softmax(x))):
        fn = getattr(kernel_frontend, name)
        want = np.concatenate([fn(g[i:i + 1], out[i:i + 1]) for i in range(n)])
        for threads in (1, 2, 3):
            assert_bitwise_equal(fn(g, out, num_threads=threads), want, what=f"{name} ({threads})")
        for which in ("grad_output", "output"):
            gi, oi = g.copy(), out.copy()
            dest = gi if which == "grad_output" else oi
            assert fn(gi, oi, out=dest, num_threads=2) is dest
            assert_bitwise_equal(dest, want, what=f"{name} in place of {which}")


@pytest.mark.parametrize("c", [10, 31, 32, 47, 64, 100, 1000, 4099])
@float_dtypes
def test_softmax_backward_same_bits_on_every_instruction_set(c, dtype):
    """softmax_backward's dot product <g, a> is summed in double in the same order on every
    compiled instruction set (32 lanes folded as the row sums are; a tile's rows in column
    order), so the gradient has the same bits on each of them: float32 everywhere (its
    products are exact in double), float64 where the build fuses the multiply-add (AVX2,
    AVX-512; the baseline build rounds the product first).  32 and 64 columns: whole steps
    of the 32 lanes only; 31, 47, 100: a partial step, alone or after whole ones."""
    names = [name for name in KERNEL_FRONTENDS if name.startswith("cython-")
             and (dtype == np.float32 or name != "cython-baseline")]
    if len(names) < 2:
        pytest.skip("one compiled instruction set on this CPU")
    rng = make_rng("backward-isa", c)
    g = (normal((37, c), rng) * 3).astype(dtype)
    a = KERNEL_FRONTENDS[names[0]].softmax(normal((37, c), rng).astype(dtype))
    want = KERNEL_FRONTENDS[names[0]].softmax_backward(g, a)
    for name in names[1:]:
        assert_bitwise_equal(KERNEL_FRONTENDS[name].softmax_backward(g, a), want, what=name)


@pytest.mark.parametrize("c", [64, 100, 1024])
@float_dtypes
def test_row_groups_give_each_row_its_own_bits(kernel_frontend, c, dtype):
    """softmax, log_softmax, logsumexp and cross-entropy (loss alone, loss + gradient) of
    long rows up to 4 KiB go four rows a unit, one step of every row before the next: each
    row's result has the same bits wherever it sits in a group (a call of that row alone,
    1-3 threads, in place), with ignored, NaN and infinite rows inside the groups; the loss
    alone, its z-loss part and its accuracy are those of the loss + gradient call."""
    rng = make_rng("row-groups", c)
    n = 23                               # five groups of four and a part of one
    x = (normal((n, c), rng) * 3).astype(dtype)
    x[5, 2], x[7, 0] = np.nan, np.inf
    x[6] = -np.inf
    t = rng.integers(0, c, n)
    t[[1, 9, 10, 11, 12]] = -100         # a whole group ignored, and single rows
    kw = dict(reduction="none", z_loss=1e-3, return_z_loss=True, return_token_accuracy=True)
    alone = [kernel_frontend.cross_entropy(x[i:i + 1], t[i:i + 1], **kw) for i in range(n)]
    fused = kernel_frontend.cross_entropy_with_grad(x, t, **kw)
    grad_alone = np.concatenate([kernel_frontend.cross_entropy_with_grad(
        x[i:i + 1], t[i:i + 1], **kw).grad for i in range(n)])
    assert_bitwise_equal(fused.grad, grad_alone, what="gradient")
    in_place = x.copy()
    kernel_frontend.cross_entropy_with_grad(in_place, t, out=in_place, num_threads=2, **kw)
    assert_bitwise_equal(in_place, grad_alone, what="gradient in place")
    lse_alone = np.concatenate([kernel_frontend.logsumexp(x[i:i + 1], axis=-1)
                                for i in range(n)])
    for threads in (1, 2, 3):
        got = kernel_frontend.cross_entropy(x, t, num_threads=threads, **kw)
        for name in ("loss", "z_loss", "token_accuracy"):
            want = np.concatenate([getattr(r, name) for r in alone])
            assert_bitwise_equal(getattr(got, name), want, what=f"{name} ({threads} threads)")
            assert_bitwise_equal(getattr(got, name), getattr(fused, name), what=f"{name} fused")
        assert_bitwise_equal(kernel_frontend.logsumexp(x, axis=-1, num_threads=threads),
                             lse_alone, what=f"logsumexp ({threads} threads)")
        for name in ("softmax", "log_softmax"):
            fn = getattr(kernel_frontend, name)
            want = np.concatenate([fn(x[i:i + 1]) for i in range(n)])
            assert_bitwise_equal(fn(x, num_threads=threads), want, what=f"{name} ({threads})")
            in_place = x.copy()
            fn(in_place, out=in_place, num_threads=threads)
            assert_bitwise_equal(in_place, want, what=f"{name} in place ({threads})")
    finite = slice(8, None)                 # the sum of the finite rows' losses
    total = kernel_frontend.cross_entropy(x[finite], t[finite], reduction="sum")
    fused_total, _ = kernel_frontend.cross_entropy_with_grad(x[finite], t[finite], reduction="sum")
    assert np.isfinite(total) and total.tobytes() == fused_total.tobytes()


@pytest.mark.parametrize("c", [2, 3, 4])
@float_dtypes
def test_narrow_rows_transposed_by_vectors(kernel_frontend, c, dtype):
    """Rows of 2 and 3 columns go into the short-row tiles 8 (float) or 4 (double) rows at
    a time by vector shuffles (Transpose2 and Transpose3 on AVX2 and AVX-512), the rest one
    element at a time.  Every row's result matches the float64 reference, and is the same
    bits wherever the row sits in a group of rows (the lanes do the same arithmetic): the
    array without its first row gives the others' results again."""
    rng = make_rng("narrow-rows", c)
    x = normal((2 * 1024 + 23, c), rng).astype(dtype)
    t = rng.integers(0, c, len(x))
    for name in ("softmax", "log_softmax", "logsumexp"):
        func = getattr(kernel_frontend, name)
        got = func(x, axis=-1)
        check_array(got, getattr(ref, name)(x, -1), dtype,
                    row_scale([x], -1, keepdims=False) if name == "logsumexp" else 1.0,
                    what=name)
        assert_bitwise_equal(func(x[1:], axis=-1), got[1:], what=f"{name} shifted by a row")
        if name != "logsumexp":
            in_place = x.copy()
            assert_bitwise_equal(func(in_place, axis=-1, out=in_place), got, what=name)
    loss, grad = kernel_frontend.cross_entropy_with_grad(x, t, reduction="none")
    exp_loss, exp_grad = ref.cross_entropy_with_grad(x, t, reduction="none")
    check_array(loss, exp_loss, dtype, what="loss")
    check_array(grad, exp_grad, dtype, what="grad")
    loss1, grad1 = kernel_frontend.cross_entropy_with_grad(x[1:], t[1:], reduction="none")
    assert_bitwise_equal(grad1, grad[1:], what="grad shifted by a row")
    assert_bitwise_equal(loss1, loss[1:], what="loss shifted by a row")


@pytest.mark.parametrize("c", [1, 2, 3, 40])
@pytest.mark.parametrize("ignore_index", [-(2**63), 2**32, 2**31 - 1 + 2**32])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_cross_entropy_ignore_index_beyond_label_dtype(kernel_frontend, c, ignore_index,
                                                        label_dtype):
    """An ignore_index that int32 labels cannot hold ignores nothing: it must not be
    narrowed to the labels' dtype (-2**63 and 2**32 become 0, 2**31 - 1 + 2**32 becomes
    -1 ... as int32), in the label check or in any kernel path."""
    rng = make_rng("ce-ignore-wide", c, ignore_index)
    logits = normal((50, c), rng)
    target = (np.arange(50) % c).astype(label_dtype)
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target.astype(np.int64))
    loss, grad = kernel_frontend.cross_entropy_with_grad(logits, target, ignore_index=ignore_index)
    check_loss(loss, exp_loss, np.float64, "mean")
    check_array(grad, exp_grad, np.float64, what="grad")


@pytest.mark.parametrize("c", [2, 3, 10, 40, 300])
@pytest.mark.parametrize("ignore_index", [-(2**63), 2**63 - 1, -1])
def test_cross_entropy_extreme_ignore_index_taken(kernel_frontend, c, ignore_index):
    """An ignore_index outside [0, c) that int64 labels do take, -2**63 among them (the
    tiles find such labels by their range test alone): exactly those rows are dropped,
    in the 2-D rows, the short-row tiles and over a middle class axis."""
    rng = make_rng("ce-ignore-extreme", c, ignore_index)
    logits = normal((60, c), rng)
    target = rng.integers(0, c, 60)
    target[::7] = ignore_index
    kept = target != ignore_index
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits[kept], target[kept],
                                                     reduction="none")
    for reduction in ("none", "mean"):
        loss, grad = kernel_frontend.cross_entropy_with_grad(
            logits, target, ignore_index=ignore_index, reduction=reduction)
        assert np.all(grad[~kept] == 0.0)
        check_array(grad[kept] * (kept.sum() if reduction == "mean" else 1), exp_grad,
                    np.float64, what="grad")
        if reduction == "none":
            assert np.all(loss[~kept] == 0.0)
            check_array(loss[kept], exp_loss, np.float64, what="loss")
        else:
            check_loss(loss, exp_loss.mean(), np.float64, "mean")
    # the classes over axis 1 of (3, c, 20): the strided kernels classify as the tiles
    x3 = np.ascontiguousarray(logits.reshape(3, 20, c).transpose(0, 2, 1))
    t3 = target.reshape(3, 20)
    loss3 = kernel_frontend.cross_entropy(x3, t3, axis=1, ignore_index=ignore_index,
                                          reduction="none")
    assert np.all(loss3.reshape(-1)[~kept] == 0.0)
    check_array(loss3.reshape(-1)[kept], exp_loss, np.float64, what="loss over axis 1")


@pytest.mark.parametrize("c", [2, 3, 10, 31])
@pytest.mark.parametrize("where", ["first", "last", "none"])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_short_rows_ignore_index_a_class(kernel_frontend, c, where, label_dtype,
                                                        smoothing):
    """The short-row tiles first copy the labels and test them all at once, and classify
    them row by row only where one is ignore_index or out of range: an ignore_index that
    is a class (0 or c - 1) drops exactly its rows, and none at all where no label takes
    it, with and without the gradient, weighted and not."""
    rng = make_rng("ce-short-ignore", c, where)
    n = 700                            # a tile and a part of one, at every c
    logits = normal((n, c), rng)
    target = rng.integers(0, c, n).astype(label_dtype)
    ignore_index = {"first": 0, "last": c - 1, "none": -100}[where]
    w = rng.random(c) + 0.5
    for weight in (None, w):
        kw = dict(ignore_index=ignore_index, label_smoothing=smoothing, weight=weight)
        exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target.astype(np.int64),
                                                         reduction="none", **kw)
        loss, grad = kernel_frontend.cross_entropy_with_grad(logits, target, reduction="none",
                                                             **kw)
        dropped = target == ignore_index
        assert np.all(loss[dropped] == 0.0) and np.all(grad[dropped] == 0.0)
        check_array(loss, exp_loss, np.float64, what="loss")
        check_array(grad, exp_grad, np.float64, what="grad")
        loss_only = kernel_frontend.cross_entropy(logits, target, reduction="none", **kw)
        assert loss_only.tobytes() == loss.tobytes()


@pytest.mark.parametrize("c", [2, 3, 10, 40])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_cross_entropy_tile_kernel_label_out_of_range(kernel_frontend, c, label_dtype):
    """The kernels themselves (called without the label check) give a row whose label is
    out of range a NaN loss and a NaN gradient row, and an ignored row 0, beside rows
    computed as usual: nothing is read at an index out of range."""
    if kernel_frontend.name == "numpy":
        pytest.skip("the NumPy twin's kernels take checked labels only")
    k = kernel_frontend.kernels
    rng = make_rng("ce-tile-kernel-range", c)
    n = 100
    x = normal((n, c), rng)
    t = rng.integers(0, c, n).astype(label_dtype)
    bad = {3: -1, 40: c, 41: -100, 77: np.iinfo(label_dtype).max, 78: np.iinfo(label_dtype).min}
    good_t = t.copy()
    for r, v in bad.items():
        t[r] = v
    for grad in (np.empty_like(x), None):
        row_loss = np.empty(n)
        k.cross_entropy_index_rows(x, t, None, -100, 0.0, 1.0, row_loss, grad, 1)
        ref_loss = np.empty(n)
        ref_grad = np.empty_like(x)
        k.cross_entropy_index_rows(x, good_t, None, -100, 0.0, 1.0, ref_loss, ref_grad, 1)
        keep = np.ones(n, bool)
        keep[list(bad)] = False
        assert row_loss[keep].tobytes() == ref_loss[keep].tobytes()
        assert row_loss[41] == 0.0
        assert np.isnan(row_loss[[3, 40, 77, 78]]).all()
        if grad is not None:
            assert grad[keep].tobytes() == ref_grad[keep].tobytes()
            assert np.all(grad[41] == 0.0)
            assert np.isnan(grad[[3, 40, 77, 78]]).all()


@pytest.mark.parametrize("c", [5, 40, 300])
def test_cross_entropy_sums_beyond_float32_range(kernel_frontend, c):
    """Sums of targets and of shifted logits that leave the float32 range while the results
    do not: only the sums of exponentials (each <= 1) may be accumulated in float32."""
    n = 4
    # probability targets of 1e38 on (up to) 8 classes: sum(y) = 8e38 > FLT_MAX
    logits = np.zeros((n, c), np.float32)
    probs = np.zeros((n, c), np.float32)
    probs[:, : min(8, c)] = 1e38
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, probs, reduction="mean")
    with np.errstate(over="ignore"):  # the loss itself overflows float32: inf
        loss, grad = kernel_frontend.cross_entropy_with_grad(logits, probs, reduction="mean")
    assert np.all(np.isfinite(grad))
    check_array(grad, exp_grad, np.float32, what="grad")
    # targets of 3e38 and -inf: y'_k (x_k - max) overflows float32 but not float64, where
    # the loss is -inf (a float product made it inf - inf = NaN; found by the fuzz test)
    probs = np.zeros((n, c), np.float32)
    probs[:, :3] = [3e38, -np.inf, 3e38][: min(3, c)]
    logits = make_rng("beyond-f32", c).standard_normal((n, c)).astype(np.float32) * 3
    with np.errstate(all="ignore"):
        exp_loss, _ = ref.cross_entropy_with_grad(logits, probs, reduction="none")
        loss, _ = kernel_frontend.cross_entropy_with_grad(logits, probs, reduction="none")
        loss_only = kernel_frontend.cross_entropy(logits, probs, reduction="none")
    np.testing.assert_array_equal(loss, exp_loss.astype(np.float32))
    np.testing.assert_array_equal(loss_only, exp_loss.astype(np.float32))
    # label smoothing over logits of -1e37: sum_k (x_k - max) = -(c - 1) 1e37 < -FLT_MAX
    logits = np.full((n, c), -1e37, np.float32)
    logits[:, 0] = 0.0
    target = np.zeros(n, np.int64)
    kw = dict(label_smoothing=0.1, reduction="none")
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, **kw)
    loss, grad = kernel_frontend.cross_entropy_with_grad(logits, target, **kw)
    assert np.all(np.isfinite(loss)) == np.all(np.isfinite(exp_loss.astype(np.float32)))
    check_array(loss, exp_loss, np.float32, what="loss")
    check_array(grad, exp_grad, np.float32, what="grad")


@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@float_dtypes
def test_cross_entropy_no_rows(frontend, kind, reduction, dtype):
    logits = np.zeros((0, 4), dtype=dtype)
    target = np.zeros(0, dtype=np.int64) if kind == "int" else np.zeros((0, 4), dtype=dtype)
    loss, grad = frontend.cross_entropy_with_grad(logits, target, reduction=reduction)
    assert grad.shape == (0, 4) and grad.dtype == dtype
    loss2 = frontend.cross_entropy(logits, target, reduction=reduction)
    for value in (loss, loss2):
        assert value.dtype == dtype
        if reduction == "mean":
            assert isinstance(value, np.generic) and np.isnan(value)
        elif reduction == "sum":
            assert isinstance(value, np.generic) and value == 0
        else:
            assert isinstance(value, np.ndarray) and value.shape == (0,)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_all_rows_ignored(frontend, weighted, reduction, rng):
    logits, _, w = ce_inputs(5, 3, rng, weight=weighted)
    target = np.full(5, -100)
    loss, grad = frontend.cross_entropy_with_grad(
        logits, target, weight=w, reduction=reduction, label_smoothing=0.1
    )
    assert np.all(grad == 0)
    if reduction == "mean":
        assert np.isnan(loss)  # a mean over zero counted rows, as in PyTorch
    else:
        assert np.all(loss == 0)


@pytest.mark.parametrize("kind", ["int", "prob"])
def test_cross_entropy_dtype_rules(frontend, kind, rng):
    """The logits' dtype governs: float16 is computed in float32 and returned as float16,
    integers become float64; target and weight dtypes do not change the result dtype."""
    logits, target, w = ce_inputs(8, 5, rng, kind=kind, weight=True)
    combos = [  # (logits dtype, target/weight float dtype, result dtype)
        (np.float16, np.float16, np.float16),
        (np.float16, np.float64, np.float16),
        (np.float32, np.float64, np.float32),
        (np.float64, np.float32, np.float64),
        (np.int64, np.float64, np.float64),
        (np.int32, np.float32, np.float64),
    ]
    for ldtype, tdtype, rdtype in combos:
        lg = (
            logits.astype(ldtype)
            if np.dtype(ldtype).kind == "f"
            else np.round(logits).astype(ldtype)
        )
        tg = target.astype(tdtype) if kind == "prob" else target
        wg = w.astype(tdtype)
        for reduction in REDUCTIONS:
            exp_loss, exp_grad = ref.cross_entropy_with_grad(lg, tg, weight=wg, reduction=reduction)
            loss, grad = call_unmodified(
                frontend.cross_entropy_with_grad, lg, tg, weight=wg, reduction=reduction
            )
            what = f"{np.dtype(ldtype)} logits, {np.dtype(tdtype)} target/weight, {reduction}"
            check_loss(loss, exp_loss, rdtype, reduction, what=f"loss ({what})")
            check_array(grad, exp_grad, rdtype, what=f"grad ({what})")


# ---------------------------------------------------------------------------------------------
# Cross-entropy out=


@pytest.mark.parametrize("c", [5, 40, 70, 300])  # tiles of short rows; rows with a vector tail
@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "out=logits"])
@float_dtypes
def test_cross_entropy_out(kernel_frontend, kind, reduction, in_place, dtype, c, rng):
    """out= and in place (out=logits): the row statistics (max, target logit, smoothing and
    soft-target sums) must be read before the gradient overwrites the logits."""
    frontend = kernel_frontend
    logits, target, w = ce_inputs(
        9, c, rng, kind=kind, weight=True, ignore_index=-100 if kind == "int" else None
    )
    logits = logits.astype(dtype)
    target = target.astype(dtype) if kind == "prob" else target
    kw = dict(weight=w.astype(dtype), reduction=reduction, label_smoothing=0.1)
    exp_loss, exp_grad = ref.cross_entropy_with_grad(logits, target, **kw)
    out = logits if in_place else np.full_like(logits, 777.0)
    loss, grad = call_unmodified(frontend.cross_entropy_with_grad, logits, target, out=out, **kw)
    assert grad is out
    check_array(out, exp_grad, dtype, what="grad")
    check_loss(loss, exp_loss, dtype, reduction)
