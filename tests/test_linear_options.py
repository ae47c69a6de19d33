"""linear_cross_entropy's cross-entropy options beyond PyTorch's: ``z_loss``, ``softcap``,
``return_z_loss`` and ``return_token_accuracy``.

Against a float64 reference (the logits ``x @ W.T + b`` materialised, then
``csoftmax.cross_entropy_with_grad`` with the same options), against PyTorch autograd through
the composition (``F.linear``, the tanh cap, ``F.cross_entropy`` plus the z-loss) for the values
and all three gradients, both frontends, every chunking, K-dimensional weights, the PyTorch
adapter, and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import csoftmax
from csoftmax import _linear

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = F = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


def case(rng, n=17, d=6, v=9, kind="index", bias=True, ignore=0.3, extra=()):
    x = rng.standard_normal((n, d)) * 2
    w = rng.standard_normal((v,) + extra + (d,))
    b = rng.standard_normal((v,) + extra) if bias else None
    if kind == "index":
        t = rng.integers(0, v, size=(n,) + extra)
        t[rng.random(t.shape) < ignore] = -100
        t[0] = int(np.argmax(x[0] @ w.reshape(v, -1, d)[:, 0].T))  # one correct row at least
    else:
        t = rng.random((n, v) + extra)
    return x, w, b, t


def reference(x, w, t, b=None, **kw):
    """float64 through the materialised logits and csoftmax.cross_entropy_with_grad
    (flags kept: (loss, z_loss, token_accuracy), gx, gw, gb)."""
    d = x.shape[-1]
    w2 = w.reshape(-1, d)
    logits = x @ w2.T
    if b is not None:
        logits = logits + b.reshape(-1)
    logits = logits.reshape(x.shape[:-1] + w.shape[:-1])
    r = csoftmax.cross_entropy_with_grad(logits, t, axis=1 if w.ndim > 2 else -1, **kw)
    g = r[1]
    g2 = g.reshape(-1, w2.shape[0]) if x.ndim == 2 else g.reshape(1, -1)
    gx = (g2 @ w2).reshape(x.shape)
    gw = (g2.T @ x.reshape(-1, d)).reshape(w.shape)
    gb = None if b is None else g2.sum(0).reshape(w.shape[:-1])
    return (r[0],) + tuple(r[2:]), gx, gw, gb


def torch_composed(x, w, t, b=None, reduction="mean", weight=None, ignore_index=-100,
                   label_smoothing=0.0, z_loss=0.0, softcap=None):
    """The loss by PyTorch ops (F.linear, the cap, F.cross_entropy plus the z-loss over the
    counted rows) and the gradients of its sum by autograd, float64."""
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    logits = F.linear(xt, wt, bt)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    tt = torch.as_tensor(t)
    wt_ = None if weight is None else torch.tensor(weight, dtype=logits.dtype)
    loss = F.cross_entropy(logits, tt, weight=wt_,
                           ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if z_loss:
        counted = (tt != ignore_index).to(logits.dtype) if tt.dim() == 1 else \
            torch.ones(len(x), dtype=logits.dtype)
        z = z_loss * torch.logsumexp(logits, dim=1) ** 2 * counted
        z = {"none": z, "sum": z.sum(), "mean": z.sum() / counted.sum()}[reduction]
        loss = loss + z
    loss.sum().backward()
    return (loss.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
            None if b is None else bt.grad.numpy())


def close(got, want, rtol=1e-10, atol=1e-12):
    if want is None:
        assert got is None
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


OPTIONS = [
    dict(z_loss=1e-2),
    dict(softcap=2.5),
    dict(z_loss=0.05, softcap=3.0, label_smoothing=0.1),
    dict(z_loss=0.05, weight="w"),  # the z-loss's own "mean" divisor (counted rows)
    dict(z_loss=0.02, softcap=1.5, weight="w", reduction="sum"),
    dict(z_loss=0.03, softcap=4.0, reduction="none", label_smoothing=0.2, weight="w"),
]


def _opts(opts, rng, v):
    opts = dict(opts)
    if opts.get("weight") == "w":
        opts["weight"] = rng.random(v) + 0.1
    return opts


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("chunk_size", [1, 4, None])
@pytest.mark.parametrize("opts", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_against_float64_reference(frontend, rng, kind, chunk_size, opts):
    x, w, b, t = case(rng, kind=kind)
    opts = _opts(opts, rng, w.shape[0])
    flags = dict(return_z_loss=True, return_token_accuracy=kind == "index")
    want = reference(x, w, t, b, **opts, **flags)
    got = _linear.call(frontend, x, w, t, True, linear_bias=b, chunk_size=chunk_size,
                       **opts, **flags)
    assert isinstance(got, csoftmax.LinearCrossEntropyGradResult)
    close(got.loss, want[0][0])
    close(got.z_loss, want[0][1])
    if kind == "index":
        close(got.token_accuracy, want[0][2], rtol=0, atol=0)
    else:
        assert got.token_accuracy is None
    for g, e in zip(got[1:4], want[1:]):
        close(g, e)
    # the loss-only call and the unflagged calls agree with the flagged one
    loss_only = _linear.call(frontend, x, w, t, False, linear_bias=b, chunk_size=chunk_size,
                             **opts, **flags)
    assert isinstance(loss_only, csoftmax.CrossEntropyResult)
    close(loss_only.loss, got.loss, rtol=1e-14, atol=1e-15)
    close(loss_only.z_loss, got.z_loss, rtol=1e-14, atol=1e-15)
    plain = _linear.call(frontend, x, w, t, True, linear_bias=b, chunk_size=chunk_size, **opts)
    assert len(plain) == 4
    close(plain[0], got.loss, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(plain[1], got.grad_input)


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("opts", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_against_torch_composition(frontend, rng, bias, opts):
    x, w, b, t = case(rng, bias=bias)
    opts = _opts(opts, rng, w.shape[0])
    want = torch_composed(x, w, t, b, **opts)
    got = _linear.call(frontend, x, w, t, True, linear_bias=b, chunk_size=5, **opts)
    for g, e in zip(got, want):
        close(g, e, rtol=1e-9)


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_float32_within_torch_error(rng, reduction):
    x, w, b, t = case(rng, n=64, d=32, v=300)
    opts = dict(z_loss=1e-3, softcap=5.0, weight=rng.random(300) + 0.5, reduction=reduction)
    want = torch_composed(x, w, t, b, **opts)
    f32 = [a.astype(np.float32) for a in (x, w, b)]
    got = csoftmax.linear_cross_entropy_with_grad(f32[0], f32[1], t, linear_bias=f32[2],
                                                  chunk_size=16, **opts)
    tw = torch_composed(*f32[:2], t, f32[2], **opts)  # PyTorch in float32
    for g, e, p in zip(got, want, tw):
        assert g.dtype == np.float32
        err = np.max(np.abs(g.astype(np.float64) - e))
        torch_err = np.max(np.abs(p.astype(np.float64) - e))
        assert err <= 4 * torch_err + 1e-6


def test_k_dimensional_weight(frontend, rng):
    x, w, b, t = case(rng, extra=(3,))
    opts = dict(z_loss=0.01, softcap=2.0, weight=rng.random(9) + 0.2, return_z_loss=True,
                return_token_accuracy=True)
    want = reference(x, w, t, b, **opts)
    got = _linear.call(frontend, x, w, t, True, linear_bias=b, **opts)
    for g, e in zip(got[0:1] + got[4:], want[0][:1] + want[0][1:]):
        close(g, e)
    for g, e in zip(got[1:4], want[1:]):
        close(g, e)


def test_one_sample_and_none_flags(frontend, rng):
    x, w, b, t = case(rng, n=1)
    got = _linear.call(frontend, x[0], w, t[0] if t[0] >= 0 else 1, False, linear_bias=b,
                       reduction="none", z_loss=0.1, return_z_loss=True,
                       return_token_accuracy=True)
    want = csoftmax.cross_entropy(x[0] @ w.T + b, t[0] if t[0] >= 0 else 1,
                                  reduction="none", z_loss=0.1, return_z_loss=True,
                                  return_token_accuracy=True)
    for g, e in zip(got, want):
        assert np.ndim(g) == 0
        close(g, e)
    # "none" with ignored rows: their z-loss and accuracy are 0
    x, w, b, t = case(rng, ignore=0.5)
    got = _linear.call(frontend, x, w, t, False, reduction="none", z_loss=0.1,
                       return_z_loss=True, return_token_accuracy=True, chunk_size=3)
    ignored = t == -100
    assert ignored.any()
    assert not got.z_loss[ignored].any() and not got.token_accuracy[ignored].any()
    assert got.z_loss[~ignored].min() > 0


def test_zero_counted_weight_with_z_loss(frontend, rng):
    x, w, b, t = case(rng, ignore=0.0)
    weight = np.zeros(w.shape[0])
    got = _linear.call(frontend, x, w, t, True, weight=weight, z_loss=0.1, return_z_loss=True)
    want = reference(x, w, t, weight=weight, z_loss=0.1, return_z_loss=True)
    assert np.isnan(got.loss) and np.isnan(want[0][0])
    close(got.z_loss, want[0][1])  # the z-loss part is still its own mean
    assert np.isnan(got.grad_input).all() and np.isnan(got.grad_linear_weight).all()


def test_all_rows_ignored(frontend, rng):
    x, w, b, t = case(rng)
    t[:] = -100
    got = _linear.call(frontend, x, w, t, True, z_loss=0.1, softcap=2.0, return_z_loss=True,
                       return_token_accuracy=True)
    assert np.isnan(got.loss) and np.isnan(got.z_loss) and np.isnan(got.token_accuracy)
    assert not got.grad_input.any()


def test_float32_flags_dtypes(rng):
    x, w, b, t = case(rng)
    r = csoftmax.linear_cross_entropy(x.astype(np.float32), w.astype(np.float32), t,
                                      z_loss=0.1, return_z_loss=True,
                                      return_token_accuracy=True)
    assert all(v.dtype == np.float32 for v in r)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(z_loss=-1.0), ValueError, r"z_loss must be finite and >= 0, got -1\.0"),
    (dict(z_loss=float("nan")), ValueError, "z_loss must be finite"),
    (dict(softcap=0.0), ValueError, r"softcap must be None or finite and > 0, got 0\.0"),
    (dict(softcap=float("inf")), ValueError, "softcap must be None or finite"),
    (dict(return_z_loss="yes"), TypeError, "return_z_loss must be a bool, not 'yes'"),
    (dict(return_token_accuracy=1), TypeError, "return_token_accuracy must be a bool"),
])
@pytest.mark.parametrize("with_grad", [False, True])
def test_errors(rng, kwargs, exc, match, with_grad):
    x, w, b, t = case(rng)
    fn = csoftmax.linear_cross_entropy_with_grad if with_grad else csoftmax.linear_cross_entropy
    with pytest.raises(exc, match=match):
        fn(x, w, t, **kwargs)


def test_token_accuracy_needs_class_indices(rng):
    x, w, b, t = case(rng, kind="prob")
    with pytest.raises(ValueError, match="return_token_accuracy needs class-index targets"):
        csoftmax.linear_cross_entropy(x, w, t, return_token_accuracy=True)


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_adapter(rng, reduction):
    import csoftmax.torch as ct

    x, w, b, t = case(rng)
    weight = rng.random(w.shape[0]) + 0.3
    opts = dict(z_loss=0.02, softcap=3.0, reduction=reduction)
    upstream = rng.standard_normal(len(x)) if reduction == "none" else 1.7
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    loss = ct.linear_cross_entropy(tensors[0], tensors[1], torch.tensor(t),
                                   linear_bias=tensors[2], weight=torch.tensor(weight), **opts)
    (loss * torch.as_tensor(upstream)).sum().backward()
    ref = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    logits = 3.0 * torch.tanh(F.linear(*ref) / 3.0)
    tt = torch.tensor(t)
    want = F.cross_entropy(logits, tt, weight=torch.tensor(weight), reduction=reduction)
    counted = (tt != -100).double()
    z = 0.02 * torch.logsumexp(logits, 1) ** 2 * counted
    want = want + {"none": z, "sum": z.sum(), "mean": z.sum() / counted.sum()}[reduction]
    (want * torch.as_tensor(upstream)).sum().backward()
    close(loss.detach().numpy(), want.detach().numpy())
    for a, e in zip(tensors, ref):
        close(a.grad.numpy(), e.grad.numpy())
