"""z_loss=, softcap=, return_z_loss=, return_token_accuracy= of the fused cross-entropy.

Reference: PyTorch autograd in float64 of the same formula,
``F.cross_entropy(softcap * tanh(x / softcap), t, ...) + z * mean/sum of lse**2`` over the
counted rows; token accuracy against a NumPy reference of the documented definition (the
target's logit equals the row maximum, ties correct, NaN rows not).
"""

from __future__ import annotations

import numpy as np
import pytest

from csoftmax import CrossEntropyGradResult, CrossEntropyResult
from csoftmax._dispatch import FRONTENDS

torch = pytest.importorskip("torch")
F = torch.nn.functional

REDUCTIONS = ("mean", "sum", "none")
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=2e-4, atol=2e-5)}


def reference(x, t, *, z=0.0, cap=None, reduction="mean", weight=None, ignore_index=-100,
              label_smoothing=0.0, axis=-1):
    """(loss, grad) in float64 by torch autograd."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    xm = torch.movedim(xt, axis, 1) if xt.dim() > 1 else xt
    xc = cap * torch.tanh(xm / cap) if cap else xm
    tt = torch.tensor(t)
    if tt.dtype.is_floating_point:
        tt = (torch.movedim(tt, axis, 1) if tt.dim() > 1 else tt).double()
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    loss = F.cross_entropy(xc, tt, weight=w, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    lse = torch.logsumexp(xc, dim=1 if xc.dim() > 1 else 0)
    counted = torch.ones_like(lse, dtype=torch.bool) if tt.dtype.is_floating_point \
        else tt != ignore_index
    zr = torch.where(counted, z * lse * lse, torch.zeros_like(lse))
    if reduction == "mean":
        zl = zr.sum() / counted.sum()
    elif reduction == "sum":
        zl = zr.sum()
    else:
        zl = zr
    total = loss + zl
    total.sum().backward()
    return total.detach().numpy(), xt.grad.numpy(), zl.detach().numpy()


def accuracy_reference(x, t, ignore_index=-100, cap=None):
    """Per row: 1 where x[t] == max (on the capped logits), 0 ignored or NaN rows."""  # noqa: D401
    x = np.asarray(x, np.float64)
    if cap:
        x = cap * np.tanh(x / cap)
    counted = t != ignore_index
    tt = np.where(counted, t, 0)
    xt = np.take_along_axis(x, tt[:, None], 1)[:, 0]
    m = x.max(axis=1)
    # NaN rows and rows whose softmax is NaN (+inf, all -inf) are not correct
    ok = (xt == m) & ~np.isnan(x).any(axis=1) & np.isfinite(m)
    return np.where(counted, ok, False).astype(float)


def _data(rng, n, c, dtype, ignore=True):
    x = (rng.standard_normal((n, c)) * 4).astype(dtype)
    t = rng.integers(0, c, n)
    if ignore and n > 3:
        t[1] = -100
        t[n // 2] = -100
    return x, t


def _close(a, b, dtype, msg=""):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, **TOL[dtype], err_msg=msg)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c", [2, 5, 10, 40, 1000])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_against_torch_every_option(kernel_frontend, rng, dtype, c, reduction):
    n = 37
    x, t = _data(rng, n, c, dtype)
    weights = (None, (rng.random(c) + 0.5).astype(dtype))
    for weight in weights:
        for ls in (0.0, 0.2):
            for z, cap in ((1e-2, None), (0.0, 3.0), (3e-2, 5.0)):
                loss, grad = kernel_frontend.cross_entropy_with_grad(
                    x, t, weight=weight, label_smoothing=ls, reduction=reduction, z_loss=z,
                    softcap=cap)
                rl, rg, _ = reference(x, t, z=z, cap=cap, reduction=reduction,
                                      weight=weight, label_smoothing=ls)
                msg = f"w={weight is not None} ls={ls} z={z} cap={cap}"
                _close(loss, rl, dtype, msg)
                _close(grad, rg, dtype, msg)
                assert grad.dtype == dtype
                lo = kernel_frontend.cross_entropy(
                    x, t, weight=weight, label_smoothing=ls, reduction=reduction, z_loss=z,
                    softcap=cap)
                _close(lo, rl, dtype, msg)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c", [3, 10, 100])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets(kernel_frontend, rng, dtype, c, reduction):
    x = (rng.standard_normal((21, c)) * 3).astype(dtype)
    y = rng.random((21, c)).astype(dtype)
    for weight in (None, (rng.random(c) + 0.5).astype(dtype)):
        for z, cap in ((1e-2, None), (2e-2, 4.0)):
            loss, grad = kernel_frontend.cross_entropy_with_grad(
                x, y, weight=weight, reduction=reduction, z_loss=z, softcap=cap,
                label_smoothing=0.1)
            rl, rg, _ = reference(x, y, z=z, cap=cap, reduction=reduction, weight=weight,
                                  label_smoothing=0.1)
            _close(loss, rl, dtype)
            _close(grad, rg, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_rows(kernel_frontend, rng, dtype, threads):
    """1 x 40000: the row split over threads (2, 3) or whole (1), the same bits."""
    x = (rng.standard_normal((1, 40000)) * 5).astype(dtype)
    t = np.array([123])
    opts = dict(z_loss=1e-3, softcap=7.0, return_z_loss=True, return_token_accuracy=True)
    r = kernel_frontend.cross_entropy_with_grad(x, t, num_threads=threads, **opts)
    r1 = kernel_frontend.cross_entropy_with_grad(x, t, num_threads=1, **opts)
    rl, rg, rz = reference(x, t, z=1e-3, cap=7.0)
    _close(r.loss, rl, dtype)
    _close(r.grad, rg, dtype)
    _close(r.z_loss, rz, dtype)
    assert r.loss.tobytes() == r1.loss.tobytes()
    assert r.grad.tobytes() == r1.grad.tobytes()
    assert r.z_loss.tobytes() == r1.z_loss.tobytes()
    loss = kernel_frontend.cross_entropy(x, t, num_threads=threads, z_loss=1e-3, softcap=7.0)
    assert loss.tobytes() == r1.loss.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,axis", [((4, 7, 5, 3), 1), ((3, 6, 9), 1), ((3, 6, 40), -1),
                                        ((5, 3, 40), 1), ((2, 50, 33), 1)])
def test_nd_axis(kernel_frontend, rng, dtype, shape, axis):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    pos = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    t = rng.integers(0, shape[axis], pos)
    t.flat[0] = -100
    for reduction in REDUCTIONS:
        for weight in (None, (rng.random(shape[axis]) + 0.5).astype(dtype)):
            r = kernel_frontend.cross_entropy_with_grad(
                x, t, axis=axis, weight=weight, reduction=reduction, z_loss=1e-2, softcap=4.0,
                return_token_accuracy=True)
            rl, rg, _ = reference(x, t, z=1e-2, cap=4.0, reduction=reduction, weight=weight,
                                  axis=axis)
            _close(r.loss, rl, dtype)
            _close(r.grad, rg, dtype)
            assert r.grad.shape == shape
            acc = accuracy_reference(np.moveaxis(x, axis, -1).reshape(-1, shape[axis]),
                                     t.reshape(-1), cap=4.0)
            if reduction == "none":
                assert r.token_accuracy.shape == pos
                np.testing.assert_array_equal(r.token_accuracy.reshape(-1), acc)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c", [2, 10, 1000])
def test_in_place(kernel_frontend, rng, dtype, c):
    x, t = _data(rng, 40, c, dtype)
    opts = dict(z_loss=1e-2, softcap=5.0, weight=(rng.random(c) + 0.5).astype(dtype))
    loss, grad = kernel_frontend.cross_entropy_with_grad(x, t, **opts)
    xi = x.copy()
    loss2, g2 = kernel_frontend.cross_entropy_with_grad(xi, t, out=xi, **opts)
    assert g2 is xi
    assert loss.tobytes() == loss2.tobytes()
    assert grad.tobytes() == xi.tobytes()
    # strided in place
    x3 = (rng.standard_normal((3, c, 5)) * 3).astype(dtype)
    t3 = rng.integers(0, c, (3, 5))
    l3, g3 = kernel_frontend.cross_entropy_with_grad(x3, t3, axis=1, **opts)
    x3i = x3.copy()
    l3i, _ = kernel_frontend.cross_entropy_with_grad(x3i, t3, axis=1, out=x3i, **opts)
    assert l3.tobytes() == l3i.tobytes()
    assert g3.tobytes() == x3i.tobytes()


@pytest.mark.parametrize("c", [2, 10, 1000])
def test_threads_bitwise(kernel_frontend, rng, c):
    x, t = _data(rng, 3000 if c < 100 else 100, c, np.float32)
    opts = dict(z_loss=1e-3, softcap=6.0, return_z_loss=True, return_token_accuracy=True,
                weight=rng.random(c).astype(np.float32) + 0.5, label_smoothing=0.1)
    rs = [kernel_frontend.cross_entropy_with_grad(x, t, num_threads=k, **opts)
          for k in (1, 2, 3)]
    for r in rs[1:]:
        for a, b in zip(r, rs[0]):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    x3 = rng.standard_normal((4, c, 300)).astype(np.float32)
    t3 = rng.integers(0, c, (4, 300))
    rs = [kernel_frontend.cross_entropy_with_grad(x3, t3, axis=1, num_threads=k, **opts)
          for k in (1, 2, 3)]
    for r in rs[1:]:
        for a, b in zip(r, rs[0]):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("c", [2, 5, 40, 1000])
def test_defaults_bitwise(kernel_frontend, rng, c):
    """z_loss=0.0, softcap=None, flags False: the plain call's bits (full and fast path)."""
    for dtype in (np.float32, np.float64):
        x, t = _data(rng, 50, c, dtype)
        for reduction in REDUCTIONS:
            a = kernel_frontend.cross_entropy_with_grad(x, t, reduction=reduction)
            b = kernel_frontend.cross_entropy_with_grad(x, t, reduction=reduction, z_loss=0.0,
                                                        softcap=None, return_z_loss=False)
            assert type(b) is tuple
            assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
            # the extras' kernels, on the full path (weight given) and the fast one, with
            # and without smoothing (float64 binary rows with smoothing once differed in the
            # target's gradient, by 1 ulp: an FMA contracted in one variant only)
            for opts in (dict(weight=np.ones(c, dtype)), dict(label_smoothing=0.2),
                         dict(weight=np.ones(c, dtype), label_smoothing=0.1)):
                p = kernel_frontend.cross_entropy_with_grad(x, t, reduction=reduction, **opts)
                q = kernel_frontend.cross_entropy_with_grad(x, t, reduction=reduction, **opts,
                                                            return_token_accuracy=True)
                assert np.asarray(p[0]).tobytes() == np.asarray(q.loss).tobytes()
                assert p[1].tobytes() == q.grad.tobytes()
            assert kernel_frontend.cross_entropy(x, t, z_loss=0.0).tobytes() == \
                kernel_frontend.cross_entropy(x, t).tobytes()
        # over a middle class axis (the strided kernels' plain and extras finishes)
        x3 = rng.standard_normal((3, c, 70)).astype(dtype)
        t3 = rng.integers(0, c, (3, 70))
        t3[0, 4] = -100
        for reduction in REDUCTIONS:
            p = kernel_frontend.cross_entropy_with_grad(x3, t3, axis=1, reduction=reduction)
            q = kernel_frontend.cross_entropy_with_grad(x3, t3, axis=1, reduction=reduction,
                                                        return_token_accuracy=True)
            assert np.asarray(p[0]).tobytes() == np.asarray(q.loss).tobytes()
            assert p[1].tobytes() == q.grad.tobytes()
            assert kernel_frontend.cross_entropy(x3, t3, axis=1, reduction=reduction,
                                                 return_token_accuracy=True).loss.tobytes() \
                == np.asarray(kernel_frontend.cross_entropy(x3, t3, axis=1,
                                                            reduction=reduction)).tobytes()


@pytest.mark.parametrize("c", [2, 3, 10, 40, 1000])
def test_token_accuracy(kernel_frontend, rng, c):
    x = rng.integers(-2, 3, (64, c)).astype(np.float64)  # many ties
    t = rng.integers(0, c, 64)
    t[5] = -100
    x[7, 0] = np.nan
    x[8, :] = -np.inf
    x[9, 1] = np.inf
    for cap in (None, 2.0):
        acc = accuracy_reference(x, t, cap=cap)
        r = kernel_frontend.cross_entropy(x, t, reduction="none", return_token_accuracy=True,
                                          softcap=cap)
        np.testing.assert_array_equal(r.token_accuracy, acc)
        m = kernel_frontend.cross_entropy(x, t, return_token_accuracy=True, softcap=cap)
        assert m.token_accuracy == pytest.approx(acc.sum() / 63)
        s = kernel_frontend.cross_entropy(x, t, reduction="sum", return_token_accuracy=True,
                                          softcap=cap)
        assert s.token_accuracy == pytest.approx(acc.sum() / 63)


def test_named_tuples(frontend, rng):
    x, t = _data(rng, 6, 4, np.float32)
    r = frontend.cross_entropy(x, t, return_z_loss=True)
    assert isinstance(r, CrossEntropyResult) and r._fields == ("loss", "z_loss", "token_accuracy")
    assert r.token_accuracy is None and r.z_loss == 0 and r.loss.dtype == np.float32
    r = frontend.cross_entropy(x, t, return_token_accuracy=True, reduction="none")
    assert r.z_loss is None and r.loss.shape == (6,) and r.token_accuracy.shape == (6,)
    g = frontend.cross_entropy_with_grad(x, t, z_loss=0.1, return_z_loss=True,
                                         return_token_accuracy=True)
    assert isinstance(g, CrossEntropyGradResult)
    assert g._fields == ("loss", "grad", "z_loss", "token_accuracy")
    assert g.grad.shape == (6, 4) and np.ndim(g.z_loss) == 0 and np.ndim(g.token_accuracy) == 0
    rl, _, rz = reference(x, t, z=0.1)
    assert float(g.z_loss) == pytest.approx(float(rz), rel=1e-4)
    one = frontend.cross_entropy(x[0], t[2], reduction="none", return_z_loss=True, z_loss=1.0)
    assert np.ndim(one.loss) == 0 and np.ndim(one.z_loss) == 0
    empty = frontend.cross_entropy(np.empty((0, 4)), np.empty(0, int), z_loss=0.1,
                                   return_z_loss=True, return_token_accuracy=True)
    assert np.isnan(empty.loss) and np.isnan(empty.z_loss) and np.isnan(empty.token_accuracy)
    f16 = frontend.cross_entropy_with_grad(x.astype(np.float16), t, z_loss=0.1, softcap=3.0,
                                           return_z_loss=True)
    assert f16.loss.dtype == np.float16 and f16.grad.dtype == np.float16


def test_numpy_twin_agrees(rng):
    if "cython" not in FRONTENDS:
        pytest.skip("no compiled kernels")
    for c in (2, 10, 1000):
        x, t = _data(rng, 30, c, np.float64)
        opts = dict(z_loss=1e-2, softcap=5.0, return_z_loss=True, return_token_accuracy=True,
                    reduction="none")
        a = FRONTENDS["cython"].cross_entropy_with_grad(x, t, **opts)
        b = FRONTENDS["numpy"].cross_entropy_with_grad(x, t, **opts)
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad,exc,match", [
    (dict(z_loss=-1.0), ValueError, "z_loss must be finite and >= 0, got -1.0"),
    (dict(z_loss=np.inf), ValueError, "z_loss must be finite"),
    (dict(z_loss=np.nan), ValueError, "z_loss must be finite"),
    (dict(z_loss="1"), TypeError, "z_loss must be a float"),
    (dict(softcap=0.0), ValueError, "softcap must be None or finite and > 0, got 0.0"),
    (dict(softcap=-2), ValueError, "got -2"),
    (dict(softcap=np.inf), ValueError, "softcap must be None or finite"),
    (dict(softcap="a"), TypeError, "softcap must be a float"),
    (dict(return_z_loss=1), TypeError, "return_z_loss must be a bool"),
    (dict(return_token_accuracy=None), TypeError, "return_token_accuracy must be a bool"),
])
def test_errors(frontend, bad, exc, match):
    x = np.zeros((2, 3))
    with pytest.raises(exc, match=match):
        frontend.cross_entropy(x, np.array([0, 1]), **bad)
    with pytest.raises(exc, match=match):
        frontend.cross_entropy_with_grad(x, np.array([0, 1]), **bad)


def test_accuracy_needs_labels(frontend):
    with pytest.raises(ValueError, match="return_token_accuracy needs class-index targets"):
        frontend.cross_entropy(np.zeros((2, 3)), np.zeros((2, 3)), return_token_accuracy=True)


def test_torch_autograd(rng):
    import csoftmax.torch as ct

    x = torch.tensor(rng.standard_normal((2, 5, 3)) * 3, requires_grad=True)
    t = torch.tensor(rng.integers(0, 5, (2, 3)))
    t[0, 0] = -100
    w = torch.rand(5, dtype=torch.float64) + 0.5
    for reduction in REDUCTIONS:
        x.grad = None
        loss = ct.cross_entropy(x, t, weight=w, reduction=reduction, z_loss=1e-2, softcap=4.0)
        loss.sum().backward()
        rl, rg, _ = reference(x.detach().numpy(), t.numpy(), z=1e-2, cap=4.0,
                              reduction=reduction, weight=w.numpy(), axis=1)
        np.testing.assert_allclose(loss.detach().numpy(), rl, rtol=1e-9)
        np.testing.assert_allclose(x.grad.numpy(), rg, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dask(rng, reduction):
    da = pytest.importorskip("dask.array")
    import dask

    import csoftmax.dask as cd

    x, t = _data(rng, 50, 7, np.float64)
    for weight in (None, rng.random(7) + 0.5):
        opts = dict(weight=weight, reduction=reduction, z_loss=1e-2, softcap=3.0)
        xd = da.from_array(x, chunks=(13, 7))
        rl, rg, _ = reference(x, t, z=1e-2, cap=3.0, reduction=reduction, weight=weight)
        np.testing.assert_allclose(cd.cross_entropy(xd, t, **opts).compute(), rl, rtol=1e-10)
        loss, grad = dask.compute(*cd.cross_entropy_with_grad(xd, t, **opts))
        np.testing.assert_allclose(loss, rl, rtol=1e-10)
        np.testing.assert_allclose(grad, rg, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_classes", [2, 5, 40])
def test_softcap_ignored_row_with_nan_keeps_a_zero_gradient(kernel_frontend, n_classes):
    """Ignored rows get an all-zero gradient whatever their logits hold, through the soft
    cap's chain factor too (0 * (1 - tanh(NaN)^2) would be NaN; found by the fuzz test)."""
    x = np.random.default_rng(3).standard_normal((3, n_classes))
    x[1, 0], x[1, -1] = np.nan, np.inf
    target = np.array([0, -100, n_classes - 1])
    loss, grad = kernel_frontend.cross_entropy_with_grad(x, target, softcap=30.0)
    assert np.isfinite(loss)
    assert (grad[1] == 0).all() and np.isfinite(grad).all()
