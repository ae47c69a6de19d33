"""Hypothesis: mathematical identities, finite-difference gradients (float64), and the compiled
kernels against the NumPy twin on random inputs (inf and NaN included)."""

from __future__ import annotations

import numpy as np
import pytest
from arrays import BOTH_FRONTENDS, assert_close, row_scale
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from csoftmax import _dispatch
from csoftmax._dispatch import FRONTENDS

# ---------------------------------------------------------------------------------------------
# Strategies

DTYPES = st.sampled_from([np.float32, np.float64])


def finite_floats(dtype, bound):
    if dtype == np.float32:
        bound = float(np.float32(bound))
        return st.floats(-bound, bound, width=32)
    return st.floats(-bound, bound)


@st.composite
def arrays_and_axis(draw, dtype=None, bound=50.0, min_side=1, max_dims=3, special=False):
    """(x, axis): an N-D float array and an axis (or None) to run along."""
    dtype = draw(DTYPES) if dtype is None else dtype
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=min_side, max_side=7))
    elements = finite_floats(dtype, bound)
    if special:
        elements = st.one_of(elements, st.sampled_from([np.inf, -np.inf, np.nan]))
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    return x, axis


@st.composite
def cross_entropy_problems(draw, dtype=np.float64, bound=5.0, valid=True):
    """(logits, target, options) for cross_entropy, every option drawn."""
    n = draw(st.integers(0 if not valid else 1, 6))
    c = draw(st.integers(1, 6))
    single = draw(st.booleans()) and n == 1
    logits = draw(hnp.arrays(dtype, (n, c), elements=finite_floats(dtype, bound)))
    kind = draw(st.sampled_from(["int", "prob"]))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    smoothing = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
    width = np.dtype(dtype).itemsize * 8
    weight = draw(st.one_of(st.none(), hnp.arrays(
        dtype, c, elements=st.floats(0.125, 3.0, width=width))))
    if kind == "int":
        ignore_index = draw(st.sampled_from([-100, -1, 0, c - 1]))
        low, high = (0, c - 1) if valid else (-2, c + 1)
        target = draw(
            hnp.arrays(
                np.int64, n, elements=st.one_of(st.integers(low, high), st.just(ignore_index))
            )
        )
    else:
        ignore_index = draw(st.sampled_from([-100, -1]))
        target = draw(hnp.arrays(dtype, (n, c), elements=st.floats(
            0.0, 2.0, width=np.dtype(dtype).itemsize * 8)))
    if single:
        logits, target = logits[0], target[0]
    options = dict(
        weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing
    )
    return logits, target, options


def _tol(dtype):
    return 1e-5 if dtype == np.float32 else 1e-12


def _sum_along(x, axis):
    return np.sum(np.asarray(x, np.float64), axis=axis)


# ---------------------------------------------------------------------------------------------
# Identities


@given(arrays_and_axis(bound=1e4))
def test_softmax_is_a_distribution(frontend, data):
    x, axis = data
    p = frontend.softmax(x, axis)
    assert p.dtype == x.dtype and p.shape == x.shape
    assert np.all(p >= 0) and np.all(p <= 1)
    n = x.size if axis is None else x.shape[axis]
    np.testing.assert_allclose(_sum_along(p, axis), 1.0, rtol=0, atol=_tol(x.dtype) * max(n, 4))


@given(arrays_and_axis(dtype=np.float64, bound=100.0), st.floats(-1e3, 1e3))
def test_shift_invariance(frontend, data, shift):
    x, axis = data
    y = x + shift  # rounds: the exponents move by up to ulp(1e3)
    tol = 1e-12 * (1 + abs(shift) + 100)
    np.testing.assert_allclose(
        frontend.softmax(y, axis), frontend.softmax(x, axis), rtol=tol, atol=tol
    )
    np.testing.assert_allclose(
        frontend.log_softmax(y, axis), frontend.log_softmax(x, axis), rtol=tol, atol=tol
    )
    np.testing.assert_allclose(
        frontend.logsumexp(y, axis), frontend.logsumexp(x, axis) + shift, rtol=tol, atol=tol
    )


@given(arrays_and_axis(bound=30.0))
def test_log_softmax_is_log_of_softmax(frontend, data):
    x, axis = data  # |x| <= 30: softmax stays far from underflow
    expected = np.log(frontend.softmax(x, axis).astype(np.float64))
    assert_close(frontend.log_softmax(x, axis), expected, x.dtype, factor=4.0)


@given(arrays_and_axis(bound=1e3))
def test_logsumexp_consistency(frontend, data):
    x, axis = data
    lse = np.asarray(frontend.logsumexp(x, axis), np.float64)
    keep = lse if axis is None else np.expand_dims(lse, axis)
    scale = row_scale([x], axis)
    assert_close(
        x - frontend.log_softmax(x, axis).astype(np.float64),
        np.broadcast_to(keep, x.shape),
        x.dtype,
        scale,
        factor=4.0,
    )
    m = np.max(x.astype(np.float64), axis=axis)
    n = x.size if axis is None else x.shape[axis]
    slack = 4 * _tol(x.dtype) * np.maximum(1, np.abs(m))
    assert np.all(lse >= m - slack) and np.all(lse <= m + np.log(n) + slack)


# ---------------------------------------------------------------------------------------------
# Finite differences, float64

H = 1e-5


def _directional(f, x, v):
    return (f(x + H * v) - f(x - H * v)) / (2 * H)


def _check_directional(analytic, numeric, scale):
    assert abs(analytic - numeric) <= 1e-6 * scale + 1e-6 * abs(numeric), (
        f"analytic {analytic!r} vs finite difference {numeric!r}"
    )


@given(cross_entropy_problems(), st.randoms(use_true_random=False))
def test_cross_entropy_gradient_finite_difference(frontend, problem, rand):
    logits, target, options = problem
    loss, grad = frontend.cross_entropy_with_grad(logits, target, **options)
    assume(np.all(np.isfinite(loss)))  # a "mean" over no counted rows is NaN

    def total_loss(x):
        return float(np.sum(frontend.cross_entropy(x, target, **options)))

    assert np.isclose(total_loss(logits), float(np.sum(loss)), rtol=1e-12, atol=1e-12)
    v = np.random.default_rng(rand.getrandbits(32)).standard_normal(logits.shape)
    numeric = _directional(total_loss, logits, v)
    analytic = float(np.sum(grad * v))
    _check_directional(analytic, numeric, float(np.sum(np.abs(grad))) + 1.0)


@st.composite
def backward_problems(draw):
    x, axis = draw(arrays_and_axis(dtype=np.float64, bound=5.0))
    g = draw(hnp.arrays(np.float64, x.shape, elements=st.floats(-3, 3)))
    v = draw(hnp.arrays(np.float64, x.shape, elements=st.floats(-1, 1)))
    return x, axis, g, v


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(problem=backward_problems())
def test_backward_finite_difference(frontend, name, problem):
    x, axis, g, v = problem
    forward = getattr(frontend, name)

    def objective(z):  # L(x) = <g, f(x)>, so dL/dx is the backward pass of g
        return float(np.sum(g * forward(z, axis)))

    dx = getattr(frontend, f"{name}_backward")(g, forward(x, axis), axis)
    assert dx.shape == x.shape
    _check_directional(
        float(np.sum(dx * v)), _directional(objective, x, v), float(np.sum(np.abs(g))) + 1.0
    )


# ---------------------------------------------------------------------------------------------
# Compiled kernels against the NumPy twin

needs_both = pytest.mark.skipif(not BOTH_FRONTENDS, reason="needs the compiled kernels")


def _outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return exc


def assert_agree(a, b, dtype, scale=1.0, what="result"):
    """Both raise the same exception, or both return equal-dtype results that agree."""
    if isinstance(a, Exception) or isinstance(b, Exception):
        assert type(a) is type(b), f"{what}: cython gave {a!r}, numpy gave {b!r}"
        return
    if isinstance(a, tuple):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_agree(x, y, dtype, scale if i else 1.0, f"{what}[{i}]")
        return
    assert np.asarray(a).dtype == np.asarray(b).dtype, what
    assert type(a) is type(b), f"{what}: {type(a)} vs {type(b)}"
    assert_close(a, b, dtype, scale, what=what, factor=4.0)


@needs_both
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@given(data=arrays_and_axis(bound=1e30, min_side=0, max_dims=4, special=True))
def test_frontends_agree_forward(name, data):
    x, axis = data
    a = _outcome(getattr(FRONTENDS["cython"], name), x, axis)
    b = _outcome(getattr(FRONTENDS["numpy"], name), x, axis)
    scale = row_scale([x], axis, keepdims=False) if name == "logsumexp" else 1.0
    assert_agree(a, b, x.dtype, scale, name)


@needs_both
@pytest.mark.parametrize("name", ["softmax_backward", "log_softmax_backward"])
@given(data=arrays_and_axis(bound=30, min_side=0, max_dims=4), seed=st.integers(0, 2**32 - 1))
def test_frontends_agree_backward(name, data, seed):
    x, axis = data
    g = np.random.default_rng(seed).standard_normal(x.shape).astype(x.dtype)
    forward = (
        FRONTENDS["numpy"].softmax if name == "softmax_backward" else FRONTENDS["numpy"].log_softmax
    )
    out = forward(x, axis)
    a = _outcome(getattr(FRONTENDS["cython"], name), g, out, axis)
    b = _outcome(getattr(FRONTENDS["numpy"], name), g, out, axis)
    assert_agree(a, b, x.dtype, row_scale([g, a if isinstance(a, np.ndarray) else g], axis), name)


@needs_both
@given(
    problem=st.one_of(
        cross_entropy_problems(np.float32, 30.0, valid=False),
        cross_entropy_problems(np.float64, 30.0, valid=False),
    )
)
def test_frontends_agree_cross_entropy(problem):
    logits, target, options = problem
    dtype = logits.dtype
    for name in ("cross_entropy", "cross_entropy_with_grad"):
        a = _outcome(getattr(FRONTENDS["cython"], name), logits, target, **options)
        b = _outcome(getattr(FRONTENDS["numpy"], name), logits, target, **options)
        assert_agree(a, b, dtype, 1.0, name)


@needs_both
@given(problem=cross_entropy_problems(np.float64, 1e3))
def test_frontends_agree_cross_entropy_special(problem):
    """Logits with -inf (masked), +inf and NaN entries: the same NaN/inf pattern either way."""
    logits, target, options = problem
    logits = logits.copy()
    rng = np.random.default_rng(int(np.abs(logits).sum()) % 2**32)
    specials = rng.choice([np.inf, -np.inf, np.nan, 0.0], size=logits.shape, p=[0.1, 0.2, 0.1, 0.6])
    logits = np.where(specials != 0, specials, logits)
    for name in ("cross_entropy", "cross_entropy_with_grad"):
        a = _outcome(getattr(FRONTENDS["cython"], name), logits, target, **options)
        b = _outcome(getattr(FRONTENDS["numpy"], name), logits, target, **options)
        assert_agree(a, b, np.float64, 1.0, name)


def _cpu_variants():
    paths = getattr(_dispatch, "cpu_frontends", None)
    return {} if paths is None or not BOTH_FRONTENDS else paths()


CPU_VARIANTS = _cpu_variants()


@needs_both
@pytest.mark.parametrize("variant", sorted(CPU_VARIANTS) or ["none"])
@given(
    problem=cross_entropy_problems(np.float32, 30.0),
    data=arrays_and_axis(bound=1e30, min_side=0, special=True),
)
def test_cpu_variants_agree(variant, problem, data):
    """Every compiled instruction-set variant this CPU runs agrees with the NumPy twin."""
    if variant == "none":
        pytest.skip("no compiled instruction-set variants")
    fe = CPU_VARIANTS[variant]
    x, axis = data
    for name in ("softmax", "log_softmax", "logsumexp"):
        scale = row_scale([x], axis, keepdims=False) if name == "logsumexp" else 1.0
        assert_agree(
            _outcome(getattr(fe, name), x, axis),
            _outcome(getattr(FRONTENDS["numpy"], name), x, axis),
            x.dtype,
            scale,
            name,
        )
    logits, target, options = problem
    assert_agree(
        _outcome(fe.cross_entropy_with_grad, logits, target, **options),
        _outcome(FRONTENDS["numpy"].cross_entropy_with_grad, logits, target, **options),
        logits.dtype,
        1.0,
        "cross_entropy_with_grad",
    )
