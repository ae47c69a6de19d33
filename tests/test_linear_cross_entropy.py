"""linear_cross_entropy(_with_grad): ``cross_entropy(input @ W.T + b, target)`` by chunks of rows.

Against PyTorch's ``F.linear_cross_entropy`` (values and the three gradients), a float64
reference through ``cross_entropy_with_grad`` on the materialised logits, both frontends (the
compiled kernels and the NumPy twin), chunking invariance, ignored rows dropped, every bad input,
and a memory test that fails if the N x V logits are ever allocated.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from arrays import peak_traced_bytes

import csoftmax
from csoftmax import _linear, _linear_args, _linear_blas, _linear_chunks

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = F = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


def case(rng, n=13, d=5, v=7, kind="index", bias=True, ignore=0.3, extra=()):
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((v,) + extra + (d,))
    b = rng.standard_normal((v,) + extra) if bias else None
    if kind == "index":
        t = rng.integers(0, v, size=(n,) + extra)
        t[rng.random(t.shape) < ignore] = -100
    else:
        t = rng.random((n, v) + extra)
    return x, w, b, t


def reference(x, w, t, b=None, with_grad=True, **kw):
    """float64 through the materialised logits and csoftmax.cross_entropy_with_grad."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    d = x.shape[-1]
    w2 = w.reshape(math.prod(w.shape[:-1]), d)  # not -1: D may be 0
    logits = x @ w2.T
    if b is not None:
        logits = logits + np.asarray(b, np.float64).reshape(-1)
    logits = logits.reshape(x.shape[:-1] + w.shape[:-1])
    axis = 1 if w.ndim > 2 else -1
    if not with_grad:
        return csoftmax.cross_entropy(logits, t, axis=axis, **kw)
    loss, g = csoftmax.cross_entropy_with_grad(logits, t, axis=axis, **kw)
    g2 = g.reshape(-1, w2.shape[0]) if x.ndim == 2 else g.reshape(1, -1)
    gx = (g2 @ w2).reshape(x.shape)
    gw = (g2.T @ x.reshape(math.prod(x.shape[:-1]), d)).reshape(w.shape)
    gb = None if b is None else g2.sum(0).reshape(w.shape[:-1])
    return loss, gx, gw, gb


def torch_lce(x, w, t, b=None, reduction="mean", ignore_index=None, **kw):
    """F.linear_cross_entropy's loss and the gradients of its sum (float64)."""
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    wgt = kw.pop("weight", None)
    loss = F.linear_cross_entropy(
        xt, wt, torch.as_tensor(t), linear_bias=bt, reduction=reduction,
        ignore_index=ignore_index, weight=None if wgt is None else torch.tensor(wgt), **kw)
    loss.sum().backward()
    return (loss.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
            None if b is None else bt.grad.numpy())


def assert_close(got, want, rtol=1e-10, atol=1e-12):
    assert len(got) == len(want)
    for g, e in zip(got, want):
        if e is None:
            assert g is None
        else:
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight="w"),
    dict(weight="w", reduction="none", label_smoothing=0.2),
    dict(label_smoothing=0.1),
    dict(weight="w", label_smoothing=0.3, reduction="sum"),
]


def _options(opts, rng, v):
    opts = dict(opts)
    if opts.get("weight") == "w":
        opts["weight"] = rng.random(v) + 0.1
    return opts


@needs_torch
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("opts", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_against_torch(frontend, rng, kind, bias, opts):
    x, w, b, t = case(rng, kind=kind, bias=bias)
    opts = _options(opts, rng, w.shape[0])
    got = _linear.call(frontend, x, w, t, True, linear_bias=b, chunk_size=4, **opts)
    want = torch_lce(x, w, t, b, ignore_index=-100 if kind == "index" else None, **opts)
    assert_close(got, want, rtol=1e-9)
    loss = _linear.call(frontend, x, w, t, False, linear_bias=b, chunk_size=4, **opts)
    np.testing.assert_allclose(loss, want[0], rtol=1e-9, atol=1e-12)
    assert_close(got, reference(x, w, t, b, **opts))


@needs_torch
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("opts", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_one_sample_against_torch(frontend, rng, kind, opts):
    x, w, b, t = case(rng, n=1, kind=kind, ignore=0.0)
    x, t = x[0], t[0]
    opts = _options(opts, rng, w.shape[0])
    got = _linear.call(frontend, x, w, t, True, linear_bias=b, **opts)
    want = torch_lce(x, w, t, b, ignore_index=-100 if kind == "index" else None, **opts)
    assert got[1].shape == x.shape
    assert np.ndim(got[0]) == 0
    assert_close(got, want, rtol=1e-9)


@needs_torch
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("opts", OPTIONS[:5], ids=[str(o) for o in OPTIONS[:5]])
def test_k_dimensional_weight_against_torch(frontend, rng, kind, opts):
    x, w, b, t = case(rng, kind=kind, extra=(3, 2))
    opts = _options(opts, rng, w.shape[0])
    got = _linear.call(frontend, x, w, t, True, linear_bias=b, **opts)
    want = torch_lce(x, w, t, b, ignore_index=-100 if kind == "index" else None, **opts)
    assert got[2].shape == w.shape and got[3].shape == b.shape
    assert_close(got, want, rtol=1e-9)
    loss = _linear.call(frontend, x, w, t, False, linear_bias=b, **opts)
    np.testing.assert_allclose(loss, want[0], rtol=1e-9, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float32_within_torch_error(rng, reduction):
    x, w, b, t = case(rng, n=64, d=32, v=300, ignore=0.2)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    ref64 = reference(x32, w32, t, b32, reduction=reduction)
    got = csoftmax.linear_cross_entropy_with_grad(x32, w32, t, linear_bias=b32,
                                                  reduction=reduction, chunk_size=10)
    th = torch_lce(x32, w32, t, b32, reduction=reduction)
    for g, e, r in zip(got, th, ref64):
        assert g.dtype == np.float32
        err = np.abs(g.astype(np.float64) - r).max()
        terr = np.abs(e.astype(np.float64) - r).max()
        assert err <= 4 * terr + 1e-6 * np.abs(r).max()


def test_finite_differences(rng):
    x, w, b, t = case(rng, n=4, d=3, v=5, ignore=0.25)
    t[0] = 1
    opts = dict(weight=rng.random(5) + 0.5, label_smoothing=0.1)
    _, gx, gw, gb = csoftmax.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, **opts)
    h = 1e-6

    def f(x_, w_, b_):
        return float(csoftmax.linear_cross_entropy(x_, w_, t, linear_bias=b_, **opts))

    for arr, grad, which in ((x, gx, 0), (w, gw, 1), (b, gb, 2)):
        num = np.empty_like(arr)
        for idx in np.ndindex(arr.shape):
            args_p = [x.copy(), w.copy(), b.copy()]
            args_m = [x.copy(), w.copy(), b.copy()]
            args_p[which][idx] += h
            args_m[which][idx] -= h
            num[idx] = (f(*args_p) - f(*args_m)) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunking_invariance(frontend, rng, kind, reduction):
    x, w, b, t = case(rng, n=23, d=6, v=9, kind=kind)
    results = [_linear.call(frontend, x, w, t, True, linear_bias=b, reduction=reduction,
                            chunk_size=c) for c in (1, 7, 23, None, 1000)]
    for r in results[1:]:
        assert_close(r, results[0], rtol=1e-12, atol=1e-14)
    want = reference(x, w, t, b, reduction=reduction)
    assert_close(results[0], want, rtol=1e-10)


def _spy_slices(monkeypatch, min_slice=16):
    """Vocabulary slices of at least ``min_slice`` classes (the slice path on
    small cases); returns the list that each slice-path call appends to."""
    monkeypatch.setattr(_linear_chunks, "MIN_SLICE", min_slice)
    calls = []
    run = _linear_chunks.run_vocab_slices

    def spy(*args):
        calls.append(args[4])  # the block's logits
        return run(*args)

    monkeypatch.setattr(_linear_chunks, "run_vocab_slices", spy)
    return calls


SLICE_OPTIONS = [
    dict(), dict(weight=True), dict(bias=True), dict(weight=True, bias=True, ignore=0.0),
    dict(label_smoothing=0.2), dict(weight=True, label_smoothing=0.1, bias=True),
    dict(z_loss=1e-2, return_z_loss=True), dict(weight=True, z_loss=1e-2, return_z_loss=True),
    dict(softcap=1.5, bias=True), dict(return_token_accuracy=True, ignore=0.0),
    dict(weight=True, label_smoothing=0.1, z_loss=1e-3, softcap=2.0, return_z_loss=True,
         return_token_accuracy=True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", SLICE_OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_vocabulary_slices_are_the_row_chunks(frontend, rng, monkeypatch, dtype, reduction,
                                              opts):
    """The loss by blocks of rows x vocabulary slices (2 x 6 blocks here, the
    last slice narrower), every option, is the row chunks' loss (the
    whole-row kernels) and the float64 one's."""
    opts = dict(opts)
    x, w, b, t = case(rng, n=120, d=6, v=100, bias=opts.pop("bias", False),
                      ignore=opts.pop("ignore", 0.3))
    x, w = x.astype(dtype), w.astype(dtype)
    if opts.get("return_token_accuracy"):
        t[::3] = np.argmax(x @ w.T, axis=1)[::3]  # some rows right
    b = None if b is None else b.astype(dtype)
    if opts.pop("weight", False):
        opts["weight"] = rng.random(100).astype(dtype) + 0.1
    kw = dict(linear_bias=b, reduction=reduction, chunk_size=8, **opts)
    by_rows = _linear.call(frontend, x, w, t, **kw)
    calls = _spy_slices(monkeypatch)
    by_slices = _linear.call(frontend, x, w, t, **kw)
    assert calls == [8 * 100]
    flagged = opts.get("return_z_loss") or opts.get("return_token_accuracy")
    parts = (by_slices, by_rows) if flagged else ((by_slices,), (by_rows,))
    want = reference(x, w, t, b, with_grad=False, reduction=reduction, **opts)
    want = want if flagged else (want,)
    eps = np.finfo(dtype).eps
    assert len(parts[0]) == len(parts[1]) == len(want)
    for got, rows_part, ref in zip(*parts, want):
        if ref is None:
            assert got is None and rows_part is None
            continue
        assert np.asarray(got).dtype == dtype and np.shape(got) == np.shape(rows_part)
        np.testing.assert_allclose(got, rows_part, rtol=32 * eps, atol=32 * eps)
        np.testing.assert_allclose(got, ref, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-6 if dtype == np.float32 else 1e-13)
    if reduction == "none":
        assert np.all(np.asarray(by_slices if not flagged else by_slices[0])[t == -100] == 0)


def test_vocabulary_slices_declined(rng, monkeypatch):
    """Gradients, probability targets, a call of one chunk and a vocabulary of
    fewer than two slices go by row chunks."""
    x, w, b, t = case(rng, n=40, d=4, v=64)
    probs = rng.random((40, 64))
    calls = _spy_slices(monkeypatch)
    csoftmax.linear_cross_entropy(x, w, probs, chunk_size=8)
    csoftmax.linear_cross_entropy(x, w, t)
    csoftmax.linear_cross_entropy_with_grad(x, w, t, chunk_size=8)
    assert calls == []
    csoftmax.linear_cross_entropy(x, w, t, chunk_size=8)
    assert calls == [8 * 64]
    monkeypatch.setattr(_linear_chunks, "MIN_SLICE", 33)  # 64 classes: fewer than two slices
    csoftmax.linear_cross_entropy(x, w, t, chunk_size=8)
    assert calls == [8 * 64]


def test_slice_shape_within_a_row_chunk():
    """A block and its gathered input rows hold no more than a row chunk's
    logits and gathered rows; the slices cover the vocabulary in equal parts."""
    rng = np.random.default_rng(7)
    for _ in range(2000):
        v = int(rng.integers(2 * _linear_chunks.MIN_SLICE, 300_000))
        n_kept = int(rng.integers(2, 20_000))
        chunk_rows = int(rng.integers(1, n_kept))
        gathered = int(rng.choice([0, 1, 64, 768, 4096, 16384]))
        rows, width = _linear_chunks.slice_shape(n_kept, v, chunk_rows * v, gathered)
        assert 1 <= rows <= n_kept and 1 <= width <= v
        assert rows * width + rows * gathered <= chunk_rows * (v + gathered)
        assert width >= min(v, _linear_chunks.MIN_SLICE) // 2 - 1
        assert -(-v // width) * width - v < width  # equal parts, the last one shorter


def test_vocabulary_slices_row_of_minus_inf(frontend, monkeypatch):
    """A row of -inf logits: NaN loss and z-loss, accuracy 0, as by rows."""
    x = np.ones((4, 2))
    x[0] = [np.inf, 0.0]
    w = np.ones((64, 2))
    w[:, 0] = -1.0
    t = np.array([1, 2, 3, 4])
    kw = dict(linear_bias=np.zeros(64), z_loss=1e-3, return_z_loss=True,
              return_token_accuracy=True, chunk_size=2)
    for reduction in ("none", "sum"):
        by_rows = _linear.call(frontend, x, w, t, reduction=reduction, **kw)
        calls = _spy_slices(monkeypatch)
        by_slices = _linear.call(frontend, x, w, t, reduction=reduction, **kw)
        monkeypatch.undo()
        assert calls
        for got, want in zip(by_slices, by_rows):
            np.testing.assert_allclose(got, want, rtol=1e-14)
        assert np.isnan(np.asarray(by_slices[0]).flat[0])
        assert np.isnan(np.asarray(by_slices[1]).flat[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slice_fold_special_values(kernel_frontend, dtype):
    """Folding slices of a row gives its whole-row loss: NaN for a NaN or +inf
    anywhere, inf for a -inf target, NaN for a row of -inf; a slice of -inf
    adds nothing."""
    inf, nan = np.inf, np.nan
    big = 0.9 * np.finfo(dtype).max
    rows = [
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [nan, 1.0, 2.0, 3.0, 4.0, 5.0],
        [0.0, 1.0, 2.0, 3.0, inf, 5.0],
        [-inf, -inf, -inf, -inf, -inf, -inf],
        [-inf, -inf, 2.0, 3.0, -inf, 5.0],
        [-inf, -inf, nan, -inf, -inf, -inf],
        [9.0, 1.0, -3.0, 80.0, -inf, -inf],
        [-80.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [big, 0.0, 1.0, 2.0, 3.0, big],
    ]
    x = np.array(rows, dtype)
    t = np.array([2, 2, 1, 0, 0, 3, 5, 0, 5], np.int64)
    want = csoftmax.cross_entropy(x, t, reduction="none").astype(np.float64)
    for width in (1, 2, 4, 6):
        row_max, row_sum = np.full(len(t), -np.inf), np.zeros(len(t))
        target_logit = np.zeros(len(t))
        for v0 in range(0, 6, width):
            block = np.ascontiguousarray(x[:, v0:v0 + width])
            kernel_frontend.kernels.logsumexp_slice_fold(block, None, t, v0, row_max, row_sum,
                                                         target_logit, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            got = np.log(row_sum) - (target_logit - row_max)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=str(width))
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, err_msg=str(width))


def test_slice_fold_bias_and_threads(kernel_frontend, rng):
    """The bias is added in place first; threads give the same bits."""
    x = rng.standard_normal((37, 50))
    b = rng.standard_normal(50)
    t = rng.integers(0, 120, 37)
    results = []
    for threads in (1, 2, 3):
        block = x.copy()
        state = [np.full(37, -np.inf), np.zeros(37), np.zeros(37)]
        kernel_frontend.kernels.logsumexp_slice_fold(block, b, t, 40, *state, threads)
        np.testing.assert_array_equal(block, x + b)
        results.append(state)
    for r in results[1:]:
        for a, c in zip(r, results[0]):
            np.testing.assert_array_equal(a, c)
    here = (t >= 40) & (t < 90)
    np.testing.assert_array_equal(results[0][2][here], (x + b)[here, t[here] - 40])
    assert np.all(results[0][2][~here] == 0)
    np.testing.assert_allclose(results[0][0], (x + b).max(1))
    np.testing.assert_allclose(results[0][1], np.exp(x + b - (x + b).max(1, keepdims=True)).sum(1),
                               rtol=1e-13)


def test_frontends_agree(rng):
    from csoftmax._dispatch import FRONTENDS

    x, w, b, t = case(rng, n=40, d=8, v=50)
    x, w, b = (a.astype(np.float32) for a in (x, w, b))
    res = [_linear.call(fe, x, w, t, True, linear_bias=b, weight=np.linspace(0.5, 2, 50),
                        label_smoothing=0.1) for fe in FRONTENDS.values()]
    for r in res[1:]:
        assert_close(r, res[0], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_and_results(rng, dtype):
    x, w, b, t = case(rng)
    x, w, b = (a.astype(dtype) for a in (x, w, b))
    loss, gx, gw, gb = csoftmax.linear_cross_entropy_with_grad(x, w, t, linear_bias=b)
    assert isinstance(loss, dtype)
    for g, a in ((gx, x), (gw, w), (gb, b)):
        assert g.dtype == dtype and g.shape == a.shape and g.flags.c_contiguous
    assert isinstance(csoftmax.linear_cross_entropy(x, w, t), dtype)
    none = csoftmax.linear_cross_entropy(x, w, t, reduction="none")
    assert none.dtype == dtype and none.shape == t.shape


def test_float16_and_integers(rng):
    x, w, b, t = case(rng)
    loss, gx, gw, gb = csoftmax.linear_cross_entropy_with_grad(
        x.astype(np.float16), w.astype(np.float16), t, linear_bias=b.astype(np.float16))
    assert isinstance(loss, np.float16) and gx.dtype == gw.dtype == gb.dtype == np.float16
    ref = reference(x.astype(np.float16), w.astype(np.float16), t, b.astype(np.float16))
    assert_close((loss, gx, gw, gb), ref, rtol=2e-2, atol=2e-3)
    xi, wi = (np.round(a * 2).astype(np.int64) for a in (x, w))
    got = csoftmax.linear_cross_entropy_with_grad(xi, wi, t)
    assert got[0].dtype == np.float64
    assert_close(got, reference(xi, wi, t, None))


def test_layouts_and_inputs_untouched(rng):
    x, w, b, t = case(rng)
    xf, wf = np.asfortranarray(x), w[::-1].copy()[::-1]
    copies = [a.copy() for a in (xf, wf, b, t)]
    for a in (xf, wf, b, t):
        a.setflags(write=False)
    got = csoftmax.linear_cross_entropy_with_grad(xf, wf, t, linear_bias=b, chunk_size=3)
    assert_close(got, reference(x, w, t, b))
    for a, c in zip((xf, wf, b, t), copies):
        np.testing.assert_array_equal(a, c)


def test_ignored_rows_dropped(frontend, rng):
    x, w, b, t = case(rng, n=20, ignore=0.0)
    t[::2] = -100
    x[::2] = np.nan  # padding may hold garbage: never read by a GEMM
    got = _linear.call(frontend, x, w, t, True, linear_bias=b, chunk_size=3)
    assert np.all(got[1][::2] == 0)
    assert all(np.isfinite(g).all() for g in (got[0], got[2], got[3]))
    keep = slice(1, None, 2)
    want = reference(x[keep], w, t[keep], b)
    assert_close((got[0], got[1][keep], got[2], got[3]), want)
    none = _linear.call(frontend, x, w, t, False, linear_bias=b, reduction="none")
    assert np.all(none[::2] == 0)


def test_all_rows_ignored_and_empty(rng):
    x, w, b, t = case(rng, n=5)
    t[:] = -100
    loss, gx, gw, gb = csoftmax.linear_cross_entropy_with_grad(x, w, t, linear_bias=b)
    assert np.isnan(loss) and not gx.any() and not gw.any() and not gb.any()
    assert csoftmax.linear_cross_entropy(x, w, t, reduction="sum") == 0
    e = np.zeros((0, 5))
    loss, gx, gw, gb = csoftmax.linear_cross_entropy_with_grad(e, w, np.zeros(0, int),
                                                               linear_bias=b)
    assert np.isnan(loss) and gx.shape == (0, 5) and not gw.any() and not gb.any()
    assert csoftmax.linear_cross_entropy(e, w, np.zeros(0, int), reduction="none").shape == (0,)


def test_zero_counted_weight_gives_nan(rng):
    x, w, b, t = case(rng, n=4, ignore=0.0)
    t[:] = 2
    t[0] = -100
    wgt = np.ones(7)
    wgt[2] = 0
    loss, gx, gw, gb = csoftmax.linear_cross_entropy_with_grad(x, w, t, weight=wgt)
    ref = reference(x, w, t, weight=wgt)
    assert np.isnan(loss) and np.isnan(ref[0])
    np.testing.assert_array_equal(np.isnan(gx), np.isnan(ref[1]))
    assert not gx[0].any()


# -- the C fast path of the loss (src/fastlinear.pxi) ------------------------

def fast_path(frontend):
    """frontend's C fast path of the loss with SciPy's GEMM handed to it (skips
    where there is none: the NumPy twin, no SciPy)."""
    if not _linear_blas.gemm_given(frontend.kernels):
        pytest.skip("no C fast path of linear_cross_entropy here")
    return frontend._fast_linear_cross_entropy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_fast_loss_is_the_python_paths(kernel_frontend, rng, dtype, reduction, bias,
                                       label_dtype):
    """The fast path's loss is the chunked Python path's (the same GEMM and bias
    add; its "mean" rounded once, the Python path's twice: 1 ulp apart at most,
    where no row is ignored)."""
    fast = fast_path(kernel_frontend)
    x, w, b, t = case(rng, n=37, d=9, v=11, bias=bias, ignore=0.0)
    x, w = x.astype(dtype), w.astype(dtype)
    b = None if b is None else b.astype(dtype)
    t = t.astype(label_dtype)
    threads = csoftmax.get_num_threads()
    got = fast(x, w, t, b, -100, reduction, 0.1, threads, 1 << 20)
    want = _linear.call(kernel_frontend, x, w, t, False, linear_bias=b, reduction=reduction,
                        label_smoothing=0.1)
    assert got is not None and type(got) is type(want) and got.dtype == want.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=2 * np.finfo(dtype).eps, atol=0)
    ref = reference(x, w, t, b, with_grad=False, reduction=reduction, label_smoothing=0.1)
    np.testing.assert_allclose(got, ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
    # ignored rows: the Python path multiplies only the counted ones, which
    # OpenBLAS may round differently in their new places (a few ulp)
    t[::3] = -100
    got = fast(x, w, t, b, -100, reduction, 0.0, threads, 1 << 20)
    want = _linear.call(kernel_frontend, x, w, t, False, linear_bias=b, reduction=reduction)
    np.testing.assert_allclose(got, want, rtol=64 * np.finfo(dtype).eps, atol=0)
    if reduction == "none":
        assert (got[::3] == 0).all()
    # one sample: (D,) input and a Python int
    one = fast(x[3], w, 4, b, -100, reduction, 0.0, threads, 1 << 20)
    want = _linear.call(kernel_frontend, x[3], w, 4, False, linear_bias=b, reduction=reduction)
    assert np.ndim(one) == 0 and one.dtype == dtype
    np.testing.assert_allclose(one, want, rtol=2 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 8, 32, 33])
def test_few_rows_same_product_both_paths(kernel_frontend, rng, dtype, n, monkeypatch):
    """Up to GEMV_ROWS rows the logits are a GEMV per row (SciPy's GEMM of one row was
    6x slower), up to FEW_ROWS the GEMM with the rows first (the other form took 1.5-2x
    the time), on the C fast path and the Python path alike: their per-row losses are
    bitwise equal on both sides of each threshold (a C rule of 2 rows against a Python
    one of 1 failed here), and within rounding of the larger calls' GEMM."""
    fast = fast_path(kernel_frontend)
    x, w, _, t = case(rng, n=n, d=256, v=1000, bias=False, ignore=0.0)
    x, w = x.astype(dtype), w.astype(dtype)
    threads = csoftmax.get_num_threads()
    got = fast(x, w, t, None, -100, "none", 0.0, threads, 1 << 20)
    want = _linear.call(kernel_frontend, x, w, t, False, reduction="none")
    np.testing.assert_array_equal(got, want)
    # gradients: grad_input of few rows by GEMV too, within rounding of the reference
    ref = reference(x, w, t, with_grad=True)
    res = csoftmax.linear_cross_entropy_with_grad(x, w, t)
    scale = np.abs(ref[1]).max()  # float32: sums of 1000 products, with cancellation
    np.testing.assert_allclose(res[1], ref[1], rtol=0,
                               atol=(1e-5 if dtype == np.float32 else 1e-12) * scale)
    if n <= _linear_blas.FEW_ROWS:  # the Python path by the larger calls' GEMM: within rounding
        monkeypatch.setattr(_linear_blas, "GEMV_ROWS", 0)
        monkeypatch.setattr(_linear_blas, "FEW_ROWS", 0)
        other = _linear.call(kernel_frontend, x, w, t, False, reduction="none")
        np.testing.assert_allclose(other, got, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [
    dict(z_loss=1e-3),
    dict(softcap=2.0),
    dict(return_token_accuracy=True),
    dict(z_loss=1e-2, softcap=3.0, return_z_loss=True, return_token_accuracy=True),
    dict(z_loss=0, return_z_loss=True),
], ids=["z", "cap", "acc", "all", "z0"])
def test_fast_loss_with_options_is_the_python_paths(kernel_frontend, rng, dtype, reduction,
                                                    options):
    """z_loss, softcap and the return_* flags on the fast path: the Python path's result
    (a CrossEntropyResult with a flag, its fields None alike), the values within its
    rounding, ignored rows included."""
    fast_path(kernel_frontend)
    x, w, b, t = case(rng, n=37, d=9, v=11, bias=True, ignore=0.25)
    x, w, b = x.astype(dtype), w.astype(dtype), b.astype(dtype)
    flags = options.get("return_z_loss", False) or options.get("return_token_accuracy", False)
    got = _linear._fast_loss(x, w, t, b, -100, reduction, 0.1, None, options.get("z_loss", 0.0),
                             options.get("softcap"), options.get("return_z_loss", False),
                             options.get("return_token_accuracy", False))
    if got is None:
        pytest.skip("the BLAS threads differ from the call's: no fast path")
    want = _linear.call(kernel_frontend, x, w, t, False, linear_bias=b, reduction=reduction,
                        label_smoothing=0.1, **options)
    pairs = zip(got, want) if flags else [(got, want)]
    if flags:
        assert type(got) is type(want) is csoftmax.CrossEntropyResult
    for g, wv in pairs:
        if wv is None:
            assert g is None
            continue
        g, wv = np.asarray(g), np.asarray(wv)
        assert g.dtype == wv.dtype and g.shape == wv.shape
        np.testing.assert_allclose(g, wv, rtol=64 * np.finfo(dtype).eps,
                                   atol=8 * np.finfo(dtype).eps)


def test_fast_loss_declines_all_else(kernel_frontend, rng):
    """Anything but the common call gives None (the Python path then validates,
    raises and computes), bad labels included, before anything is written."""
    fast = fast_path(kernel_frontend)
    x, w, b, t = case(rng, n=6, d=4, v=5)
    args = [x, w, t, b, -100, "mean", 0.0, 1, 1 << 20]
    assert fast(*args) is not None

    def declined(**changes):
        a = list(args)
        names = ["x", "w", "t", "b", "ignore_index", "reduction", "label_smoothing",
                 "threads", "max_bytes"]
        for k, v in changes.items():
            a[names.index(k)] = v
        return fast(*a) is None

    assert declined(x=x.astype(np.float32))  # mixed dtypes: the Python path promotes
    assert declined(x=np.asfortranarray(x))
    assert declined(x=x[:, None])
    assert declined(x=x.tolist())
    assert declined(w=w[:, :3])
    assert declined(w=w[:, None])
    assert declined(b=b[:4])
    assert declined(b=b.astype(np.float32))
    assert declined(t=t.astype(np.uint8))
    assert declined(t=t.astype(np.int16))
    assert declined(t=t[:5])
    assert declined(t=t.tolist())
    bad = t.copy()
    bad[2] = 5
    assert declined(t=bad)  # not a class: the Python path names it
    assert declined(reduction="avg")
    assert declined(ignore_index=1.5)
    assert declined(label_smoothing=1.5)
    assert declined(threads=0)
    assert _linear._fast_loss(x, w, t, b, -100, "mean", 0.0, 2**40) is None
    assert _linear._fast_loss(x, w, t, b, -100, "mean", 0.0, True) is None
    assert declined(max_bytes=6 * 5 * 8 - 1)  # logits over one chunk
    assert not declined(max_bytes=6 * 5 * 8)
    assert declined(x=x.astype(np.float16), w=w.astype(np.float16), b=None)
    # options the full path converts or refuses: NumPy numbers, a non-positive cap,
    # flags that are not True or False
    extra = [0.0, None, False, False]
    for i, v in [(0, np.float64(0.1)), (0, -1.0), (1, 0.0), (1, np.inf), (2, 1), (3, None)]:
        opts = list(extra)
        opts[i] = v
        assert fast(*args, *opts) is None, (i, v)
    assert fast(*args, 0.1, 2.0, True, True) is not None


def test_public_loss_takes_the_fast_path(rng, monkeypatch):
    """The common call never builds the Python path's argument object; an option
    the fast path lacks (class weights) does, with the same loss."""
    x, w, b, t = case(rng, n=9, d=4, v=6)
    if _linear._fast_loss(x, w, t, b, -100, "mean", 0.0, None) is None:
        pytest.skip("no C fast path here (NumPy twin, no SciPy, or BLAS threads differ)")
    want = csoftmax.linear_cross_entropy(x, w, t, linear_bias=b, weight=np.ones(6))
    built = []
    real = _linear_args.LinearArgs.__init__

    def spy(self, *a, **k):
        built.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(_linear_args.LinearArgs, "__init__", spy)
    got = csoftmax.linear_cross_entropy(x, w, t, linear_bias=b)
    assert not built
    np.testing.assert_allclose(got, want, rtol=1e-15)
    csoftmax.linear_cross_entropy(x, w, t, linear_bias=b, weight=np.ones(6))
    assert built
    with pytest.raises(ValueError, match=r"target\[0\] = 6 is not a class index"):
        csoftmax.linear_cross_entropy(x, w, np.full(9, 6), linear_bias=b)


def test_fast_loss_needs_the_blas_at_the_calls_threads(rng):
    """Where a limit would be needed (the BLAS runs other than the call's
    threads) the fast path is not taken: the Python path sets the limit."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x, w, b, t = case(rng)
    if _linear._fast_loss(x, w, t, b, -100, "mean", 0.0, None) is None:
        pytest.skip("no C fast path here")
    blas = [i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"]
    other = max(blas) + 1
    assert _linear._fast_loss(x, w, t, b, -100, "mean", 0.0, other) is None
    assert _linear._fast_loss(x, w, t, b, -100, "mean", 0.0, "2") is None


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads(rng, threads):
    x, w, b, t = case(rng, n=300, d=40, v=200)
    x, w, b = (a.astype(np.float32) for a in (x, w, b))
    got = csoftmax.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, num_threads=threads)
    one = csoftmax.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, num_threads=1)
    # the cross-entropy kernels are bitwise thread-independent; OpenBLAS's GEMM need not be
    assert_close(got, one, rtol=1e-5, atol=1e-7)


def test_blas_threads_limited(rng, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []
    x, w, b, t = case(rng)
    real = _linear_blas.Gemms.add_grad_weight

    def spy(self, *a):
        seen.append({i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
                     if i["user_api"] == "blas"})
        return real(self, *a)

    monkeypatch.setattr(_linear_blas.Gemms, "add_grad_weight", spy)
    csoftmax.linear_cross_entropy_with_grad(x, w, t, num_threads=1)
    assert seen and all(n == 1 for s in seen for n in s.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_scipy_the_same(rng, monkeypatch, dtype):
    """The fallback without SciPy (NumPy's matmul for every product, a temporary for the
    weight gradient) gives what SciPy's BLAS path gives."""
    x, w, b, t = (a if a is None or a.dtype.kind != "f" else a.astype(dtype)
                  for a in case(rng, n=40, d=7, v=30))
    opts = dict(linear_bias=b, chunk_size=6, weight=np.linspace(0.5, 2, 30), z_loss=0.01)
    with_scipy = csoftmax.linear_cross_entropy_with_grad(x, w, t, **opts)
    monkeypatch.setattr(_linear_blas, "_scipy_blas", None)
    gemms = _linear_blas.Gemms(np.dtype(dtype))
    assert gemms.gemm is None
    without = csoftmax.linear_cross_entropy_with_grad(x, w, t, **opts)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    assert_close(without, with_scipy, **tol)
    for got in without[1:]:
        assert got.dtype == dtype


def test_default_chunk_rows():
    rows = _linear_chunks.default_chunk_rows
    assert rows(4096, 32000, 4) == 512  # 64 MiB: 524 rows, made 8 equal chunks
    assert rows(16384, 32000, 4) == 512
    assert rows(2048, 128256, 4) == 410  # at least 512, but at most N / 5 (rounded up)
    assert rows(8192, 50257, 4) == 512
    assert rows(1024, 32000, 4) == 205
    assert rows(16, 262144, 4) == 16  # 16 MiB of logits, but at least 64 rows
    assert rows(100, 10, 4) == 100 and rows(64, 1000, 4) == 64 and rows(1, 10, 4) == 1
    assert rows(0, 10, 4) == 1
    for n, v in [(4096, 32000), (2048, 128256), (1000, 50000), (999, 7000)]:
        r = rows(n, v, 4)
        chunks = -(-n // r)
        assert r * chunks - n < chunks  # equal chunks
        assert r * v * 4 <= max(n * v * 4 / 4, _linear_chunks.WHOLE_BYTES)  # a quarter of them


@pytest.mark.parametrize("with_grad", [False, True])
def test_never_holds_the_logits(with_grad):
    n, v, d = 2048, 8192, 64
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((v, d), dtype=np.float32)
    t = rng.integers(0, v, n)
    logits_bytes = n * v * 4
    outputs = (x.nbytes + w.nbytes + 4 * v) if with_grad else 0
    fn = csoftmax.linear_cross_entropy_with_grad if with_grad else csoftmax.linear_cross_entropy
    fn(x, w, t, linear_bias=np.zeros(v, np.float32))  # warm up (imports, caches)
    peak = peak_traced_bytes(lambda: fn(x, w, t, linear_bias=np.zeros(v, np.float32)))
    assert peak - outputs < logits_bytes / 4, (peak, logits_bytes)


def test_pickled_functions_round_trip():
    import pickle

    f = pickle.loads(pickle.dumps(csoftmax.linear_cross_entropy))
    assert f is csoftmax.linear_cross_entropy


# ---------------------------------------------------------------------------------------------
# errors: every bad input, before anything runs

X, W, T = np.zeros((3, 4)), np.zeros((5, 4)), np.zeros(3, int)
ERRORS = [
    (dict(input=np.zeros(())), ValueError, r"input must be \(N, D\) or \(D,\), got shape \(\)"),
    (dict(input=np.zeros((2, 3, 4))), ValueError,
     r"input must be \(N, D\) or \(D,\), got shape \(2, 3, 4\)"),
    (dict(linear_weight=np.zeros(4)), ValueError,
     r"linear_weight must be \(V, D\) or \(V, d1, ..., D\), got shape \(4,\)"),
    (dict(linear_weight=np.zeros((5, 3))), ValueError,
     r"input of shape \(3, 4\) and linear_weight of shape \(5, 3\) differ in their last "
     r"dimension"),
    (dict(linear_bias=np.zeros(4)), ValueError,
     r"linear_bias has shape \(4,\), expected \(5,\) for linear_weight of shape \(5, 4\)"),
    (dict(input=np.zeros(4), linear_weight=np.zeros((5, 2, 4)), target=np.zeros(2, int)),
     ValueError, r"\(a K-dimensional loss\) needs \(N, D\) input, got shape \(4,\)"),
    (dict(target=np.zeros(4, int)), ValueError,
     r"class-index target has shape \(4,\), expected \(3,\) for input of shape \(3, 4\) and "
     r"linear_weight of shape \(5, 4\)"),
    (dict(target=np.zeros((3, 4))), ValueError,
     r"probability target has shape \(3, 4\), expected the logits' shape \(3, 5\)"),
    (dict(target=np.zeros((3, 5)), ignore_index=0), ValueError,
     r"ignore_index=0 is not supported with probability targets"),
    (dict(target=np.array(["a", "b", "c"])), TypeError, r"target has dtype <U1"),
    (dict(target=np.array([0, 5, 1])), ValueError,
     r"target\[1\] = 5 is not a class index in \[0, 5\) nor ignore_index \(-100\)"),
    (dict(target=np.array([0, -1, 1])), ValueError, r"target\[1\] = -1 is not a class index"),
    (dict(weight=np.ones(4)), ValueError,
     r"weight has shape \(4,\), expected \(5,\) for linear_weight of shape \(5, 4\)"),
    (dict(input=np.zeros((3, 4), complex)), TypeError, r"input has dtype complex128"),
    (dict(linear_weight=np.zeros((5, 4), complex)), TypeError,
     r"linear_weight has dtype complex128"),
    (dict(linear_bias=np.zeros(5, complex)), TypeError, r"linear_bias has dtype complex128"),
    (dict(reduction="avg"), ValueError, r"reduction must be one of"),
    (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
    (dict(label_smoothing="x"), TypeError, r"label_smoothing must be a float"),
    (dict(ignore_index=1.5), TypeError, r"ignore_index must be an int, not float"),
    (dict(num_threads=0), ValueError, r"num_threads must be >= 1, got 0"),
    (dict(chunk_size=0), ValueError, r"chunk_size must be >= 1, got 0"),
    (dict(chunk_size=2.0), TypeError, r"chunk_size must be an int or None, not float"),
    (dict(linear_weight=np.zeros((0, 4))), ValueError,
     r"linear_weight of shape \(0, 4\) has no classes"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), ERRORS, ids=[e[2][:40] for e in ERRORS])
@pytest.mark.parametrize("with_grad", [False, True])
def test_errors(kwargs, exc, match, with_grad):
    args = dict(input=X, linear_weight=W, target=T)
    args.update(kwargs)
    fn = csoftmax.linear_cross_entropy_with_grad if with_grad else csoftmax.linear_cross_entropy
    with pytest.raises(exc, match=match):
        fn(args.pop("input"), args.pop("linear_weight"), args.pop("target"), **args)


def test_grid_of_options_small(rng):
    """Every combination of options on a small case, against the reference."""
    for kind, bias, reduction, smooth, wgt in itertools.product(
            ["index", "prob"], [False, True], ["mean", "sum", "none"], [0.0, 0.2],
            [False, True]):
        x, w, b, t = case(rng, n=9, d=3, v=4, kind=kind, bias=bias)
        opts = dict(reduction=reduction, label_smoothing=smooth,
                    weight=rng.random(4) + 0.2 if wgt else None)
        got = csoftmax.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, chunk_size=2,
                                                      **opts)
        assert_close(got, reference(x, w, t, b, **opts))


# ---------------------------------------------------------------------------------------------
# csoftmax.torch.linear_cross_entropy against F.linear_cross_entropy (autograd)


def _autograd(fn, x, w, t, b, upstream, **kw):
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    loss = fn(xt, wt, torch.as_tensor(t), linear_bias=bt, **kw)
    (loss * torch.as_tensor(upstream)).sum().backward()
    return (loss.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
            None if b is None else bt.grad.numpy())


@needs_torch
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("extra", [(), (2,)])
def test_torch_adapter(rng, kind, bias, reduction, extra):
    import csoftmax.torch as ct

    x, w, b, t = case(rng, kind=kind, bias=bias, extra=extra)
    upstream = rng.standard_normal(t.shape if kind == "index" else t.shape[:1] + extra) \
        if reduction == "none" else 1.7
    kw = dict(reduction=reduction, weight=torch.tensor(rng.random(7) + 0.1),
              label_smoothing=0.1)
    got = _autograd(ct.linear_cross_entropy, x, w, t, b, upstream, **kw)
    want = _autograd(F.linear_cross_entropy, x, w, t, b, upstream, **kw)
    assert_close(got, want, rtol=1e-9)


@needs_torch
def test_torch_adapter_float32_options_and_partial_grads(rng):
    import csoftmax.torch as ct

    x, w, b, t = case(rng, n=30, d=8, v=20)
    xt = torch.tensor(x, dtype=torch.float32)
    wt = torch.tensor(w, dtype=torch.float32, requires_grad=True)
    loss = ct.linear_cross_entropy(xt, wt, torch.as_tensor(t),
                                   options=torch.nn.LinearCrossEntropyOptions())
    assert loss.dtype == torch.float32
    loss.backward()
    w2 = wt.detach().clone().requires_grad_()
    F.linear_cross_entropy(xt, w2, torch.as_tensor(t)).backward()
    torch.testing.assert_close(wt.grad, w2.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        nog = ct.linear_cross_entropy(xt, wt, torch.as_tensor(t))
    assert not nog.requires_grad and torch.isclose(nog, loss)


@needs_torch
def test_torch_adapter_errors():
    import csoftmax.torch as ct

    x, w = torch.zeros(3, 4), torch.zeros(5, 4)
    with pytest.raises(RuntimeError, match="ignore_index cannot be specified when target "
                                           "contains probabilities"):
        ct.linear_cross_entropy(x, w, torch.zeros(3, 5), ignore_index=-100)
    with pytest.raises(RuntimeError, match="expected input with dimensionality 1 or 2, got 3"):
        ct.linear_cross_entropy(torch.zeros(2, 3, 4), w, torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="expected linear_weight with dimensionality at "
                                           "least 2, got 1"):
        ct.linear_cross_entropy(x, torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target\[0\] = 7 is not a class index"):
        ct.linear_cross_entropy(x, w, torch.tensor([7, 0, 0]))
    with pytest.raises(NotImplementedError, match="weight requires grad"):
        ct.linear_cross_entropy(x.requires_grad_(), w, torch.zeros(3, dtype=torch.long),
                                weight=torch.ones(5, requires_grad=True))
    y = torch.zeros(2, 4, requires_grad=True)
    loss = ct.linear_cross_entropy(y, w, torch.zeros(2, dtype=torch.long))
    (g,) = torch.autograd.grad(loss, y, create_graph=False)
    assert g.shape == y.shape
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(ct.linear_cross_entropy(y, w, torch.zeros(2, dtype=torch.long)),
                            y, create_graph=True)


def test_bench_op_runs(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench").is_dir():
        pytest.skip("bench/ is not beside tests/")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--ops", "linear_cross_entropy", "--shapes", "8x16x20",
         "--dtypes", "float32", "--threads", "1", "--budget", "0.05",
         "--peers", "csoftmax,csoftmax_loss,csoftmax_half,gemm",
         "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| linear_cross_entropy | 8x16x20 | float32 | 1 |" in proc.stdout
    assert "MISMATCH" not in proc.stdout
    # the peak-memory table: each peer once more in a fresh process
    assert "### Peak memory beyond the inputs and the returned results" in proc.stdout
    import json

    rows = json.loads((tmp_path / "b.json").read_text())["memory"]
    assert [r["shape"] for r in rows] == [[8, 16, 20]]
    assert set(rows[0]["peers"]) == {"csoftmax", "csoftmax_loss"}
    for m in rows[0]["peers"].values():
        assert m["method"] == "rss" and m["extra_mib"] >= 0 and m["peak_mib"] < 50, m


def test_bench_memory_sees_the_logits():
    """bench.memory's measure (a fresh process, the RSS high-water mark) sees csoftmax's
    chunk buffer (a fifth of the logits by default) and counts the returned gradients apart."""
    pytest.importorskip("threadpoolctl")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench").is_dir():
        pytest.skip("bench/ is not beside tests/")
    import sys

    sys.path.insert(0, str(root))
    try:
        from bench import memory
    finally:
        sys.path.remove(str(root))
    shape, logits_mib = (1024, 64, 16384), 1024 * 16384 * 4 / 2**20
    ours = memory.measure("linear_cross_entropy", shape, "float32", "csoftmax", 1)
    assert ours["results_mib"] >= 16384 * 64 * 4 / 2**20  # grad_linear_weight
    assert ours["extra_mib"] <= logits_mib / 4, ours
    assert ours["extra_mib"] >= 0.15 * logits_mib, ours  # the chunk buffer is seen


def test_import_csoftmax_imports_no_optional_dependency():
    """SciPy (a second OpenBLAS, whose threads compete with every kernel call) and
    threadpoolctl are imported on the first linear_cross_entropy call, not with csoftmax."""
    import subprocess
    import sys

    code = ("import sys, csoftmax; bad = [m for m in ('scipy', 'threadpoolctl', 'torch') "
            "if m in sys.modules]; assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.abspath(csoftmax.__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=root)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_features(frontend, dtype, chunk_size):
    """D = 0: the logits are the bias (or zeros), grad_input and grad_linear_weight empty
    (SciPy's GEMM refuses an empty result: the products then go through NumPy)."""
    rng = np.random.default_rng(3)
    x, w = np.zeros((3, 0), dtype), np.zeros((5, 0), dtype)
    t = np.array([0, 4, -100])
    for b in (None, rng.standard_normal(5).astype(dtype)):
        for reduction in ("mean", "sum", "none"):
            kw = dict(linear_bias=b, reduction=reduction, chunk_size=chunk_size)
            loss, gx, gw, gb = _linear.call(frontend, x, w, t, True, **kw)
            want = reference(x, w, t, b, reduction=reduction)
            assert gx.shape == (3, 0) and gw.shape == (5, 0)
            assert gx.dtype == gw.dtype == dtype
            tol = dict(rtol=1e-6) if dtype == np.float32 else dict(rtol=1e-14)
            np.testing.assert_allclose(loss, want[0], **tol)
            if b is not None:
                np.testing.assert_allclose(gb, want[3], atol=1e-7, **tol)
            np.testing.assert_allclose(_linear.call(frontend, x, w, t, **kw), loss, **tol)


def test_slow_module_has_the_linear_functions(rng):
    """csoftmax.slow's linear functions: the public signatures, the NumPy twin's results."""
    import inspect

    from csoftmax import slow
    from csoftmax._dispatch import FRONTENDS

    x, w, b, t = case(rng)
    for name, with_grad in (("linear_cross_entropy", False),
                            ("linear_cross_entropy_with_grad", True)):
        ours = getattr(slow, name)
        assert inspect.signature(ours) == inspect.signature(getattr(csoftmax, name))
        got = ours(x, w, t, linear_bias=b, label_smoothing=0.1, chunk_size=4)
        want = _linear.call(FRONTENDS["numpy"], x, w, t, with_grad, linear_bias=b,
                            label_smoothing=0.1, chunk_size=4)
        for g, v in zip(got if with_grad else (got,), want if with_grad else (want,)):
            np.testing.assert_array_equal(g, v)
        with pytest.raises(TypeError):
            ours(x, w, t, b)


@pytest.mark.parametrize("with_grad", [False, True])
@pytest.mark.parametrize(("n", "d"), [(3, 0), (0, 3), (0, 0)])
def test_k_dimensional_empty(frontend, n, d, with_grad):
    """A K-dimensional weight with no features or no rows: the loss (NaN for a "mean" of
    nothing) and gradients of the input's and weight's shapes."""
    x, w = np.zeros((n, d)), np.zeros((5, 2, d))
    t = np.zeros((n, 2), int)
    for reduction in ("mean", "sum", "none"):
        got = _linear.call(frontend, x, w, t, with_grad, reduction=reduction)
        want = reference(x, w, t, with_grad=with_grad, reduction=reduction)
        if with_grad:
            assert got[1].shape == x.shape and got[2].shape == w.shape
            got, want = got[0], want[0]
        np.testing.assert_allclose(got, want, rtol=1e-14)


@needs_torch
def test_no_features_through_torch():
    """D = 0 through csoftmax.torch: PyTorch's loss and gradients."""
    import csoftmax.torch as ct

    for reduction in ("mean", "none"):
        xs = [torch.zeros(3, 0, dtype=torch.float64, requires_grad=True) for _ in range(2)]
        ws = [torch.zeros(5, 0, dtype=torch.float64, requires_grad=True) for _ in range(2)]
        bs = [torch.arange(5.0, dtype=torch.float64, requires_grad=True) for _ in range(2)]
        t = torch.tensor([0, 4, 2])
        ours = ct.linear_cross_entropy(xs[0], ws[0], t, linear_bias=bs[0], reduction=reduction)
        theirs = F.cross_entropy(xs[1] @ ws[1].T + bs[1], t, reduction=reduction)
        torch.testing.assert_close(ours, theirs)
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(bs[0].grad, bs[1].grad)
        assert xs[0].grad.shape == (3, 0) and ws[0].grad.shape == (5, 0)
