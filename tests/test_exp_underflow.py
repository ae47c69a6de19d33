"""The exponentials where they underflow: subnormal probabilities and the clamp of the
kernels' exp (src/exp.hpp, exp_nonpositive) below which every argument gives +0, -inf
included.  A row [0, d, -inf, ...] sums to exactly 1 (in double, 1 + exp(d) rounds to 1), so
its softmax at d, and the cross-entropy gradient there with reduction="none", is exp(d)
as the kernel's exp gives it: within one ulp of exp(d) rounded once, and +0
exactly where that rounds to 0, on every compiled variant, for short rows (the tiles), long
rows, a class axis that is not the last (the strided kernels) and a mask."""

from __future__ import annotations

import numpy as np
import pytest
from arrays import assert_bitwise_equal

#: arguments d = x - max over the subnormal range of exp and past the clamp
#: (float32: exp(d) < 2^-126 below -87.3, 0 below -103.97; float64: below -708.4 and -745.1)
SPANS = {"float32": (-108.0, -85.0), "float64": (-750.0, -705.0)}


def _rows(dtype, n):
    lo, hi = SPANS[dtype]
    d = np.linspace(lo, hi, 2001).astype(dtype)
    d = np.concatenate([d, np.array([-np.inf, -1e30, np.finfo(dtype).min], dtype)])
    x = np.full((d.size, n), -np.inf, dtype)
    x[:, 0] = 0
    x[:, 1] = d
    return x, d


def _expected(d):
    # exp in extended precision, then one rounding (np.longdouble is 80-bit on x86)
    with np.errstate(under="ignore"):
        return np.exp(d.astype(np.longdouble)).astype(d.dtype)


def _check_exp(got, expected, ulps, what):
    ulp = np.spacing(expected)       # the smallest subnormal below the normal range
    err = np.abs(got.astype(np.longdouble) - expected.astype(np.longdouble))
    assert np.all(err <= ulps * ulp), what
    zero = expected == 0
    assert_bitwise_equal(got[zero], np.zeros(int(zero.sum()), got.dtype), what + " (+0)")


@pytest.mark.parametrize("n", [2, 10, 100])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_and_gradient_underflow(kernel_frontend, dtype, n):
    if np.finfo(np.longdouble).nmant < 60:
        pytest.skip("needs an extended-precision long double for the reference")
    x, d = _rows(dtype, n)
    expected = _expected(d)
    p = kernel_frontend.softmax(x)
    # the compiled exp: 1 ulp; the NumPy twin's is NumPy's (2 ulp seen near 2^-126)
    ulps = 1 if kernel_frontend.name.startswith("cython") else 4
    _check_exp(p[:, 1], expected, ulps, f"softmax at d, {n} columns")
    assert np.all(p[:, 0] == 1) and np.all(p[:, 2:] == 0)
    pt = kernel_frontend.softmax(np.ascontiguousarray(x.T), axis=0)
    assert_bitwise_equal(pt[1], p[:, 1], "softmax over axis 0")
    assert_bitwise_equal(kernel_frontend.softmax(x, where=x > -np.inf), p, "softmax, where=")
    loss, g = kernel_frontend.cross_entropy_with_grad(x, np.zeros(len(x), np.int64),
                                                      reduction="none")
    assert_bitwise_equal(g[:, 1], p[:, 1], f"gradient at d, {n} columns")
    assert np.all(loss == 0) and np.all(g[:, 0] == 0)
    assert_bitwise_equal(kernel_frontend.logsumexp(x), np.zeros(len(x), dtype), "logsumexp")


@pytest.mark.parametrize("shape", [(512, 2), (512, 10), (128, 1000), (4, 40000)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sums_drop_subnormal_terms_without_changing_them(kernel_frontend, dtype, shape):
    """A loss without its gradient, logsumexp and log_softmax sum the summand exp's terms
    (exp_nonpositive_as<true>), +0 below 2^-125 (2^-1021), where the calls that store the
    exponentials keep them.
    On logits spread far beyond that (a fifth of the terms dropped) the sums, at least 1 and
    in double, have the same bits: the loss alone equals the loss beside its gradient, on
    every path (rows, tiles, split rows, the class axis first: the strided kernels);
    logsumexp and log_softmax against float64."""
    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * (30 if dtype == "float32" else 250)).astype(dtype)
    x[rng.random(shape) < 0.01] = -np.inf
    t = rng.integers(0, shape[1], shape[0])
    loss, grad = kernel_frontend.cross_entropy_with_grad(x, t, reduction="none")
    for threads in (1, 2):
        alone = kernel_frontend.cross_entropy(x, t, reduction="none", num_threads=threads)
        assert_bitwise_equal(alone, loss, f"loss alone, {threads} threads")
    xt = np.ascontiguousarray(x.T)
    first, _ = kernel_frontend.cross_entropy_with_grad(xt, t, axis=0, reduction="none")
    alone = kernel_frontend.cross_entropy(xt, t, axis=0, reduction="none")
    assert_bitwise_equal(alone, first, "loss alone, class axis 0")
    x64 = x.astype(np.float64)
    m = x64.max(1, keepdims=True)
    lse = m + np.log(np.exp(x64 - m).sum(1, keepdims=True))
    eps = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(kernel_frontend.logsumexp(x), lse[:, 0], rtol=eps, atol=eps)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(kernel_frontend.log_softmax(x), x64 - lse, rtol=eps,
                                   atol=eps * np.abs(x64[np.isfinite(x64)]).max())
