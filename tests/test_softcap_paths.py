"""softcap= on every kernel path, without a capped copy of the logits.

Each path caps what it reads (tiles of short rows on the stack, long rows in a thread's
scratch row, rows split over threads a chunk at a time, strided blocks in their staging
scratch, probability targets likewise): against the float64 PyTorch reference, in place
against out of place, the loss alone against the loss with its gradient, and 1, 2, 3
threads against each other, bit for bit.  The cap is computed by blocks that skip the exp
where every logit is well inside the cap: blocks with and without large logits, NaN and
inf, and a cap whose reciprocal overflows.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_zloss_softcap import TOL, reference

pytest.importorskip("torch")

# (shape, axis): tiles (C < 32), long rows, rows split over threads (C > 16384 and fewer
# rows than two per thread), the strided kernel (class axis not last)
PATHS = [((70, 2), -1), ((70, 7), -1), ((40, 31), -1), ((9, 1500), -1), ((1, 40000), -1),
         ((3, 40000), -1), ((3, 7, 5, 3), 1), ((2, 40, 70), 1)]


def _bits(r):
    return [np.asarray(a).tobytes() for a in r]


def _close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, **TOL[dtype])


def _logits(rng, shape, dtype, cap):
    """Logits mostly inside the cap, a few beyond 0.625 cap (the exp branch of the cap)."""
    x = rng.standard_normal(shape) * (0.15 * cap)
    x.flat[rng.integers(0, x.size, max(1, x.size // 400))] *= 12.0
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", PATHS)
def test_paths(kernel_frontend, rng, dtype, shape, axis):
    cap = 5.0
    x = _logits(rng, shape, dtype, cap)
    ax = axis % len(shape)
    pos = shape[:ax] + shape[ax + 1:]
    t = rng.integers(0, shape[ax], pos)
    t.flat[0] = -100
    weight = (rng.random(shape[ax]) + 0.5).astype(dtype)
    for reduction, ls in (("mean", 0.1), ("none", 0.0)):
        opts = dict(axis=axis, softcap=cap, z_loss=1e-3, label_smoothing=ls, weight=weight,
                    reduction=reduction)
        rl, rg, _ = reference(x, t, z=1e-3, cap=cap, reduction=reduction, weight=weight,
                              label_smoothing=ls, axis=axis)
        runs = []
        for threads in (1, 2, 3):
            r = kernel_frontend.cross_entropy_with_grad(x, t, num_threads=threads, **opts)
            _close(r[0], rl, dtype)
            _close(r[1], rg, dtype)
            xi = x.copy()
            ri = kernel_frontend.cross_entropy_with_grad(xi, t, out=xi, num_threads=threads,
                                                         **opts)
            assert _bits(ri) == _bits(r), f"in place, {threads} threads"
            lo = kernel_frontend.cross_entropy(x, t, num_threads=threads, **opts)
            _close(lo, rl, dtype)
            if ls == 0.0:  # (with smoothing the loss alone adds its smoothing sum otherwise)
                assert np.asarray(lo).tobytes() == np.asarray(r[0]).tobytes(), \
                    f"loss only, {threads} threads"
            runs.append(_bits(r))
        assert runs[1] == runs[0] and runs[2] == runs[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(70, 7), (9, 1500), (3, 40000)])
def test_probability_targets(kernel_frontend, rng, dtype, shape):
    cap = 4.0
    x = _logits(rng, shape, dtype, cap)
    y = rng.random(shape).astype(dtype)
    rl, rg, _ = reference(x, y, z=1e-3, cap=cap, reduction="sum", label_smoothing=0.1)
    runs = []
    for threads in (1, 2, 3):
        opts = dict(softcap=cap, z_loss=1e-3, label_smoothing=0.1, reduction="sum",
                    num_threads=threads)
        _close(kernel_frontend.cross_entropy(x, y, **opts), rl, dtype)
        r = kernel_frontend.cross_entropy_with_grad(x, y, **opts)
        _close(r[0], rl, dtype)
        _close(r[1], rg, dtype)
        xi = x.copy()
        assert _bits(kernel_frontend.cross_entropy_with_grad(xi, y, out=xi, **opts)) == _bits(r)
        runs.append(_bits(r))
    assert runs[1] == runs[0] and runs[2] == runs[0]


@pytest.mark.parametrize("c", [5, 1500])
def test_special_values(kernel_frontend, rng, c):
    """inf logits cap to +-cap; NaN propagates to its row; an ignored row holding NaN
    gets a zero gradient; a row of logits far inside the cap and one far beyond."""
    x = _logits(rng, (6, c), np.float64, 3.0)
    x[0, 1] = np.inf
    x[1, 0] = -np.inf
    x[2, 2] = np.nan
    x[3, :] = np.nan
    x[4, :] *= 1e-6
    x[5, :] *= 1e6
    t = np.array([1, 2, 0, -100, 3, 4])
    loss, grad = kernel_frontend.cross_entropy_with_grad(x, t, softcap=3.0, reduction="none")
    finite = x.copy()
    finite[0, 1], finite[1, 0] = 1e300, -1e300      # cap * tanh: +-cap, as for +-inf
    rl, rg, _ = reference(finite[[0, 1, 4, 5]], t[[0, 1, 4, 5]], cap=3.0, reduction="none")
    _close(loss[[0, 1, 4, 5]], rl, np.float64)
    _close(grad[[0, 1, 4, 5]], rg, np.float64)
    assert np.isnan(loss[2]) and np.isnan(grad[2]).all()
    assert loss[3] == 0 and not np.any(grad[3])


def test_tiny_cap(kernel_frontend, rng):
    """A float32 cap whose reciprocal overflows (subnormal): x / cap, not x * (1 / cap)."""
    x = rng.standard_normal((20, 40)).astype(np.float32)
    x[0, 0] = 0.0
    t = rng.integers(0, 40, 20)
    cap = 1e-39
    loss, grad = kernel_frontend.cross_entropy_with_grad(x, t, softcap=cap)
    rl, rg, _ = reference(x, t, cap=np.float32(cap).item())
    np.testing.assert_allclose(float(loss), float(rl), rtol=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, rg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((3, 7, 5, 3), 1), ((2, 40, 70), 1), ((5, 3, 4), 0),
                                        ((2, 3, 200, 2), -3)])
@pytest.mark.parametrize("cap", [None, 4.0])
def test_probability_targets_strided(kernel_frontend, rng, dtype, shape, axis, cap):
    """Probability targets over a class axis that is not the last: the strided kernel (no
    moved copy), against the reference, in place, at 1-3 threads bit for bit."""
    x = _logits(rng, shape, dtype, 4.0)
    y = rng.random(shape).astype(dtype)
    c = shape[axis]
    opts = dict(axis=axis, softcap=cap, z_loss=1e-3, label_smoothing=0.1,
                weight=(rng.random(c) + 0.5).astype(dtype))
    for reduction in ("mean", "none"):
        rl, rg, _ = reference(x, y, z=1e-3, cap=cap, reduction=reduction,
                              weight=opts["weight"], label_smoothing=0.1, axis=axis)
        runs = []
        for threads in (1, 2, 3):
            r = kernel_frontend.cross_entropy_with_grad(x, y, reduction=reduction,
                                                        num_threads=threads, **opts)
            _close(r[0], rl, dtype)
            _close(r[1], rg, dtype)
            assert r[1].shape == shape and r[1].dtype == dtype
            _close(kernel_frontend.cross_entropy(x, y, reduction=reduction,
                                                 num_threads=threads, **opts), rl, dtype)
            xi = x.copy()
            ri = kernel_frontend.cross_entropy_with_grad(xi, y, out=xi, reduction=reduction,
                                                         num_threads=threads, **opts)
            assert _bits(ri) == _bits(r)
            runs.append(_bits(r))
        assert runs[1] == runs[0] and runs[2] == runs[0]
