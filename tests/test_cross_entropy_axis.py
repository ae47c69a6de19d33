"""Cross-entropy over the class axis of N-D logits (``axis=``), against PyTorch's
``F.cross_entropy`` on ``(N, C, d1, ..., dK)`` input, the 2-D call on the same rows, and
bad input; and ``csoftmax.torch.cross_entropy`` on N-D tensors with autograd."""

from __future__ import annotations

import numpy as np
import pytest
from arrays import assert_bitwise_equal, make_rng

torch = pytest.importorskip("torch")
F = torch.nn.functional

#: (logits shape, class axis)
CASES = [((4, 5, 3, 2), 1), ((2, 3, 7), -1), ((2, 3, 7), 0), ((6, 4), 0), ((3, 1, 5), 1),
         ((2, 5, 3), 2), ((1, 40, 2, 3), 1)]
OPTIONS = [
    {},
    {"reduction": "sum", "label_smoothing": 0.2},
    {"reduction": "none", "ignore_index": 1},
    {"weight": True, "reduction": "mean", "label_smoothing": 0.1},
]


def _inputs(shape, axis, kind, rng, dtype=np.float64):
    axis = axis % len(shape)
    c = shape[axis]
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    positions = shape[:axis] + shape[axis + 1:]
    if kind == "int":
        target = rng.integers(0, c, size=positions)
        target.flat[::3] = -100
    else:
        target = rng.random(shape).astype(dtype)
    weight = rng.uniform(0.5, 2.0, size=c).astype(dtype)
    return x, target, weight


def _torch_reference(x, target, axis, options, weight):
    """F.cross_entropy with the classes moved to dimension 1, and its gradient."""
    xt = torch.from_numpy(np.moveaxis(x, axis, 1) if x.ndim > 1 else x).requires_grad_()
    tt = torch.from_numpy(np.moveaxis(target, axis, 1) if target.shape == x.shape and x.ndim > 1
                          else target)
    kwargs = {k: v for k, v in options.items() if k != "weight"}
    if options.get("weight"):
        kwargs["weight"] = torch.from_numpy(weight)
    loss = F.cross_entropy(xt, tt, **kwargs)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    loss.backward(upstream)
    grad = xt.grad.numpy()
    if x.ndim > 1:
        grad = np.moveaxis(grad, 1, axis)
    return loss.detach().numpy(), grad, upstream.numpy()


@pytest.mark.parametrize("options", OPTIONS, ids=["mean", "sum-smooth", "none-ignore", "weight"])
@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("case", CASES, ids=[f"{s}-axis{a}" for s, a in CASES])
def test_like_torch(frontend, case, kind, options, rng):
    shape, axis = case
    if kind == "prob" and "ignore_index" in options:
        options = {**options, "ignore_index": -100}
    x, target, weight = _inputs(shape, axis, kind, rng)
    if kind == "int" and "ignore_index" in options:
        target[target == -100] = options["ignore_index"]
    kw = {k: v for k, v in options.items() if k != "weight"}
    if options.get("weight"):
        kw["weight"] = weight
    want_loss, want_grad, upstream = _torch_reference(x, target, axis % x.ndim, options, weight)
    loss = frontend.cross_entropy(x, target, axis=axis, **kw)
    loss2, grad = frontend.cross_entropy_with_grad(x, target, axis=axis, **kw)
    assert_bitwise_equal(loss, loss2, "loss with and without the gradient")
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10, atol=1e-12)
    if options.get("reduction") == "none":
        # the gradient of the loss summed with factors: scale each position's gradient
        grad = grad * np.expand_dims(upstream, axis % x.ndim)
    else:
        grad = grad * upstream
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12)
    assert grad.shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[f"{s}-axis{a}" for s, a in CASES])
def test_same_as_rows(frontend, case, dtype, rng):
    """The N-D call is the 2-D call on the rows of the moved class axis: bitwise when the
    class axis is last, else within rounding (the sums may run in another order)."""
    shape, axis = case
    x, target, _ = _inputs(shape, axis, "int", rng, dtype)
    c = shape[axis]
    rows = np.ascontiguousarray(np.moveaxis(x, axis, -1)).reshape(-1, c)
    want_loss, want_grad = frontend.cross_entropy_with_grad(rows, target.reshape(-1),
                                                            reduction="none")
    loss, grad = frontend.cross_entropy_with_grad(x, target, axis=axis, reduction="none")
    want_grad = np.moveaxis(want_grad.reshape(target.shape + (c,)), -1, axis)
    assert loss.shape == target.shape and grad.shape == x.shape
    assert grad.flags.c_contiguous
    if axis % x.ndim == x.ndim - 1:
        assert_bitwise_equal(loss, want_loss.reshape(target.shape))
        assert_bitwise_equal(grad, want_grad)
    else:
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(loss, want_loss.reshape(target.shape), rtol=tol, atol=tol)
        np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)


def test_out_and_in_place(frontend, rng):
    x, target, _ = _inputs((3, 4, 5), 1, "int", rng)
    want_loss, want_grad = frontend.cross_entropy_with_grad(x, target, axis=1)
    out = np.empty_like(x)
    loss, grad = frontend.cross_entropy_with_grad(x, target, axis=1, out=out)
    assert grad is out
    assert_bitwise_equal(grad, want_grad)
    y = x.copy()
    loss, grad = frontend.cross_entropy_with_grad(y, target, axis=1, out=y)
    assert grad is y
    assert_bitwise_equal(grad, want_grad)
    assert_bitwise_equal(loss, want_loss)


def test_bad_input(frontend, rng):
    x, target, _ = _inputs((2, 3, 4), 1, "int", rng)
    with pytest.raises(np.exceptions.AxisError, match=r"axis 3 is out of range.*\(2, 3, 4\)"):
        frontend.cross_entropy(x, target, axis=3)
    with pytest.raises(TypeError, match="axis must be an int"):
        frontend.cross_entropy(x, target, axis=(1,))
    with pytest.raises(ValueError, match=r"target has shape \(2, 3\), expected \(2, 4\)"):
        frontend.cross_entropy(x, target.reshape(2, 4)[:, :3], axis=1)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        frontend.cross_entropy(x, target, axis=-1)
    bad = target.copy()
    bad[1, 2] = 3
    with pytest.raises(ValueError, match=r"target\[1, 2\] = 3 is not a class index in \[0, 3\)"):
        frontend.cross_entropy_with_grad(x, bad, axis=1)
    with pytest.raises(ValueError, match="got shape"):
        frontend.cross_entropy(np.float64(1.0), 0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 5, 3), (2, 3, 4, 2), (5, 3)])
def test_torch_adapter_nd(shape, reduction):
    ct = pytest.importorskip("csoftmax.torch")
    rng = make_rng("torch-adapter-nd", shape, reduction)
    x = torch.from_numpy(rng.standard_normal(shape)).requires_grad_()
    target = torch.from_numpy(rng.integers(0, shape[1], size=shape[:1] + shape[2:]))
    target.view(-1)[::4] = -100
    weight = torch.from_numpy(rng.uniform(0.5, 2, size=shape[1]))
    xr = x.detach().clone().requires_grad_()
    loss = ct.cross_entropy(x, target, weight=weight, reduction=reduction, label_smoothing=0.1)
    want = F.cross_entropy(xr, target, weight=weight, reduction=reduction, label_smoothing=0.1)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    loss.backward(upstream)
    want.backward(upstream)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)
