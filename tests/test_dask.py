"""csoftmax.dask against the in-memory functions: the local threaded scheduler for every
option, a two-process dask.distributed LocalCluster for the main paths, the global "mean"
reduction across chunks, rechunking of the class axis, and errors."""

from __future__ import annotations

import importlib
import itertools
import sys
import warnings

import numpy as np
import pytest
from arrays import peak_traced_bytes

import csoftmax

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
cd = pytest.importorskip("csoftmax.dask")

REDUCTIONS = ("mean", "sum", "none")
TOL = {np.dtype(np.float32): dict(rtol=2e-6, atol=1e-7),
       np.dtype(np.float64): dict(rtol=1e-13, atol=1e-15)}


@pytest.fixture(autouse=True)
def threaded_scheduler():
    with dask.config.set(scheduler="threads"):
        yield


def make_case(kind, weighted, dtype, n=103, c=7, seed=0):
    """Logits, targets (integer with ignored rows bunched in the first chunks, or soft
    probabilities) and weights."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    if kind == "int":
        t = rng.integers(0, c, n)
        t[:15] = -100  # most of the first chunk: per-chunk means would be wrong
        t[40:43] = -100
    else:
        t = rng.random((n, c)).astype(dtype)
    w = (rng.random(c) + 0.5).astype(dtype) if weighted else None
    return x, t, w


def check_close(ours, ref, dtype):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == dtype
    np.testing.assert_allclose(ours, ref, **TOL[np.dtype(dtype)])


_CE = list(itertools.product(("int", "prob"), (False, True), REDUCTIONS, (0.0, 0.2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("kind", "weighted", "reduction", "smoothing"), _CE,
                         ids=["-".join(map(str, o)) for o in _CE])
def test_cross_entropy_like_in_memory(kind, weighted, reduction, smoothing, dtype):
    x, t, w = make_case(kind, weighted, dtype)
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    ref_loss, ref_grad = csoftmax.cross_entropy_with_grad(x, t, **kw)
    dx = da.from_array(x, chunks=(20, 7))
    dt = da.from_array(t, chunks=13 if t.ndim == 1 else (13, 7))  # other row chunks: aligned
    loss = cd.cross_entropy(dx, dt, **kw)
    assert isinstance(loss, da.Array)
    check_close(loss.compute(), ref_loss, dtype)
    loss2, grad = cd.cross_entropy_with_grad(dx, t, **kw)
    assert grad.chunks == dx.chunks
    loss2, grad = dask.compute(loss2, grad)
    check_close(loss2, ref_loss, dtype)
    check_close(grad, ref_grad, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("shape", "axis", "chunks"), [
    ((4, 5, 6, 3), 1, (2, 5, 4, 3)),   # (N, C, H, W), PyTorch's layout
    ((3, 8, 5), -1, (2, 3, 5)),        # (batch, seq, vocab)
    ((5, 4), 0, (5, 2)),
])
@pytest.mark.parametrize("kind", ["int", "prob"])
def test_cross_entropy_class_axis(kind, shape, axis, chunks, reduction):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    ax = axis % len(shape)
    if kind == "int":
        t = rng.integers(0, shape[ax], shape[:ax] + shape[ax + 1:])
        t.flat[::4] = -100
    else:
        t = rng.random(shape)
    kw = dict(axis=axis, reduction=reduction, weight=rng.random(shape[ax]) + 0.5)
    ref_loss, ref_grad = csoftmax.cross_entropy_with_grad(x, t, **kw)
    dx = da.from_array(x, chunks=chunks)
    loss = cd.cross_entropy(dx, t, **kw)
    check_close(loss.compute(), ref_loss, np.float64)
    loss2, grad = dask.compute(*cd.cross_entropy_with_grad(dx, t, **kw))
    check_close(loss2, ref_loss, np.float64)
    check_close(grad, ref_grad, np.float64)


def test_mean_is_global_not_per_chunk():
    x, t, w = make_case("int", True, np.float64)
    dx = da.from_array(x, chunks=(20, 7))
    ours = cd.cross_entropy(dx, t, weight=w).compute()
    ref = csoftmax.cross_entropy(x, t, weight=w)
    chunk_means = [csoftmax.cross_entropy(x[i:i + 20], t[i:i + 20], weight=w)
                   for i in range(0, 103, 20)]
    assert ours == pytest.approx(ref, rel=1e-13)
    assert abs(np.mean(chunk_means) - ref) > 1e-3  # the test data tell them apart


def test_mean_over_no_counted_rows_is_nan():
    x, _, _ = make_case("int", False, np.float64)
    t = np.full(103, -100)
    loss, grad = dask.compute(*cd.cross_entropy_with_grad(da.from_array(x, chunks=20), t))
    assert np.isnan(loss) and np.isnan(cd.cross_entropy(x, t).compute())
    assert not grad.any()
    # zero counted weight: nan on the counted rows, 0 on ignored ones (as in memory)
    t = np.zeros(103, np.int64)
    t[:10] = -100
    w = np.array([0.0, 1, 1, 1, 1, 1, 1])
    ref = csoftmax.cross_entropy_with_grad(x, t, weight=w)
    ours = dask.compute(*cd.cross_entropy_with_grad(da.from_array(x, chunks=20), t, weight=w))
    np.testing.assert_array_equal(np.isnan(ours[1]), np.isnan(ref[1]))
    assert np.isnan(ours[0]) and np.isnan(ref[0])


def test_no_rows():
    x = da.zeros((0, 5), chunks=(10, 5))
    t = np.zeros(0, np.int64)
    assert np.isnan(cd.cross_entropy(x, t).compute())
    assert cd.cross_entropy(x, t, reduction="sum").compute() == 0
    loss, grad = dask.compute(*cd.cross_entropy_with_grad(x, t, reduction="none"))
    assert loss.shape == (0,) and grad.shape == (0, 5)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize(("shape", "chunks", "axis"), [
    ((50, 9), (8, 9), -1),
    ((6, 9, 5), (2, 9, 3), 1),
    ((6, 9, 5), (6, 3, 5), (0, 2)),
])
def test_rowwise_like_in_memory(fn, shape, chunks, axis):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 4
    out = getattr(cd, fn)(da.from_array(x, chunks=chunks), axis=axis)
    ref = getattr(csoftmax, fn)(x, axis=axis)
    assert isinstance(out, da.Array)
    np.testing.assert_array_equal(out.compute(), ref)  # same kernel, same rows: bitwise


def test_class_axis_split_is_rechunked_with_a_warning():
    x = np.random.default_rng(2).standard_normal((40, 12))
    dx = da.from_array(x, chunks=(10, 5))
    with pytest.warns(da.PerformanceWarning, match="rechunked to one chunk along that axis"):
        y = cd.softmax(dx)
    assert y.chunks == ((10,) * 4, (12,))
    np.testing.assert_array_equal(y.compute(), csoftmax.softmax(x))
    t = np.arange(40) % 12
    with pytest.warns(da.PerformanceWarning):
        loss = cd.cross_entropy(dx, t)
    assert loss.compute() == pytest.approx(csoftmax.cross_entropy(x, t), rel=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cd.softmax(dx.rechunk({1: -1}))  # whole rows: no warning


def test_numpy_input_and_dtypes():
    x = np.arange(12, dtype=np.int32).reshape(4, 3)
    y = cd.softmax(x)
    assert isinstance(y, da.Array) and y.dtype == np.float64
    np.testing.assert_array_equal(y.compute(), csoftmax.softmax(x))
    h = cd.log_softmax(da.from_array(x.astype(np.float16), chunks=(2, 3)))
    assert h.dtype == np.float16 and h.compute().dtype == np.float16


def test_errors():
    x, t, _ = make_case("int", False, np.float64)
    dx = da.from_array(x, chunks=(20, 7))
    bad = t.copy()
    bad[57] = 9
    for reduction in REDUCTIONS:
        with pytest.raises(ValueError, match=r"target\[57\] = 9 .*rows 40:60"):
            dask.compute(*cd.cross_entropy_with_grad(dx, bad, reduction=reduction))
        with pytest.raises(ValueError, match=r"target\[57\] = 9"):
            cd.cross_entropy(dx, bad, reduction=reduction).compute()
    # checked when the graph is built, before anything runs
    with pytest.raises(ValueError, match="reduction"):
        cd.cross_entropy(dx, t, reduction="avg")
    with pytest.raises(ValueError):
        cd.cross_entropy_with_grad(dx, t, label_smoothing=1.5)
    with pytest.raises(ValueError):
        cd.cross_entropy(dx, t, weight=np.ones(3))
    with pytest.raises(ValueError, match="target has shape"):
        cd.cross_entropy(dx, t[:50])
    with pytest.raises(ValueError, match=r"expected \(2, 4\) class indices"):
        cd.cross_entropy(da.zeros((2, 3, 4)), t[:2], axis=1)
    with pytest.raises(ValueError):
        cd.softmax(dx, num_threads=0)
    with pytest.raises(TypeError):
        cd.softmax(da.zeros((2, 3), dtype=complex))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        cd.cross_entropy(dx[dx[:, 0] > 0], t[:10])


def test_local_cluster_two_processes():
    distributed = pytest.importorskip("distributed")
    x, t, w = make_case("int", True, np.float32, n=2000, c=11)
    dx = da.from_array(x, chunks=(300, 11))
    ref_loss, ref_grad = csoftmax.cross_entropy_with_grad(x, t, weight=w, label_smoothing=0.1)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        loss, grad = cd.cross_entropy_with_grad(dx, t, weight=w, label_smoothing=0.1)
        loss, grad, probs, lsum = client.compute(
            [loss, grad, cd.softmax(dx), cd.cross_entropy(dx, t, reduction="sum")], sync=True)
    check_close(loss, ref_loss, np.float32)
    check_close(grad, ref_grad, np.float32)
    np.testing.assert_array_equal(probs, csoftmax.softmax(x))
    check_close(lsum, csoftmax.cross_entropy(x, t, reduction="sum"), np.float32)


def test_import_without_dask_is_a_clear_import_error(monkeypatch):
    for name in ("dask", "dask.array"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "csoftmax.dask")
    with pytest.raises(ImportError, match=r"csoftmax\.dask needs dask.*pip install"):
        importlib.import_module("csoftmax.dask")


# -- linear_cross_entropy ---------------------------------------------------------------------

def make_linear(kind, dtype, n=61, d=5, v=9, seed=1, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((v, d)).astype(dtype)
    b = rng.standard_normal(v).astype(dtype) if bias else None
    if kind == "int":
        t = rng.integers(0, v, n)
        t[:12] = -100  # most of the first chunk
        t[30:33] = -100
    else:
        t = rng.random((n, v)).astype(dtype)
    return x, w, b, t


def check_lin(ours, ref, dtype):
    """As check_close, with float32 sums of products (GEMMs over other chunks) compared
    to the scale of the result."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if np.dtype(dtype) == np.float64:
        return check_close(ours, ref, dtype)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == dtype
    scale = float(np.nanmax(np.abs(ref))) if ref.size else 1.0
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * scale)


_LIN = [dict(), dict(weight=True), dict(label_smoothing=0.2, weight=True),
        dict(z_loss=0.05, weight=True), dict(z_loss=0.02, softcap=2.0)]


def _lin_opts(opts, v, dtype):
    opts = dict(opts)
    if opts.pop("weight", False):
        opts["weight"] = np.linspace(0.5, 2.0, v).astype(dtype)
    return opts


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("opts", _LIN, ids=[str(o) for o in _LIN])
def test_linear_cross_entropy_like_in_memory(kind, reduction, opts, dtype):
    x, w, b, t = make_linear(kind, dtype)
    opts = dict(_lin_opts(opts, w.shape[0], dtype), reduction=reduction)
    dx = da.from_array(x, chunks=(16, 5))
    want = csoftmax.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, **opts)
    lazy = cd.linear_cross_entropy_with_grad(dx, w, t, linear_bias=b, chunk_size=5, **opts)
    got = dask.compute(*lazy)
    assert got[1].shape == x.shape and got[2].shape == w.shape and got[3].shape == b.shape
    assert lazy[1].chunks == dx.chunks
    for g, e in zip(got, want):
        check_lin(g, e, dtype)
    check_lin(cd.linear_cross_entropy(dx, w, t, linear_bias=b, **opts).compute(), want[0],
              dtype)


def test_linear_cross_entropy_dask_weights_and_edge_cases():
    x, w, b, t = make_linear("int", np.float64, bias=False)
    dx = da.from_array(x, chunks=(7, 5))
    want = csoftmax.linear_cross_entropy_with_grad(x, w, t)
    got = dask.compute(*cd.linear_cross_entropy_with_grad(
        dx, da.from_array(w, chunks=(4, 5)), da.from_array(t, chunks=20)))
    assert got[3] is None
    for g, e in zip(got[:3], want[:3]):
        check_close(g, e, np.float64)
    # every row ignored: nan loss, zero gradients, as in memory
    t_none = np.full_like(t, -100)
    want = csoftmax.linear_cross_entropy_with_grad(x, w, t_none, linear_bias=b)
    got = dask.compute(*cd.linear_cross_entropy_with_grad(dx, w, t_none, linear_bias=b))
    assert np.isnan(got[0]) and np.isnan(want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    # zero counted weight: nan, and nan gradients on the counted rows only
    zero = np.zeros(w.shape[0])
    want = csoftmax.linear_cross_entropy_with_grad(x, w, t, weight=zero)
    got = dask.compute(*cd.linear_cross_entropy_with_grad(dx, w, t, weight=zero))
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


def test_linear_cross_entropy_errors():
    x, w, b, t = make_linear("int", np.float64)
    dx = da.from_array(x, chunks=(16, 5))
    bad = t.copy()
    bad[40] = 9
    for reduction in REDUCTIONS:
        with pytest.raises(ValueError, match=r"target\[40\] = 9 is not a class index in \[0, 9\)"):
            cd.linear_cross_entropy(dx, w, bad, reduction=reduction).compute()
    with pytest.raises(ValueError, match=r"input must be \(N, D\) and linear_weight \(V, D\)"):
        cd.linear_cross_entropy(dx, w[:, None], t)
    with pytest.raises(ValueError, match="differ in their last dimension"):
        cd.linear_cross_entropy(dx, w[:, :4], t)
    with pytest.raises(ValueError, match=r"expected \(61,\) class indices"):
        cd.linear_cross_entropy(dx, w, t[:5])
    with pytest.raises(ValueError, match=r"linear_bias has shape \(8,\)"):
        cd.linear_cross_entropy(dx, w, t, linear_bias=b[:8])
    with pytest.raises(ValueError, match="z_loss must be finite"):
        cd.linear_cross_entropy_with_grad(dx, w, t, z_loss=-1.0)
    with pytest.raises(ValueError, match="unknown reduction|reduction"):
        cd.linear_cross_entropy(dx, w, t, reduction="avg")
    with pytest.warns(da.PerformanceWarning, match="rechunked"):
        loss = cd.linear_cross_entropy(da.from_array(x, chunks=(16, 2)), w, t)
    check_close(loss.compute(), csoftmax.linear_cross_entropy(x, w, t), np.float64)


def test_linear_cross_entropy_local_cluster():
    distributed = pytest.importorskip("distributed")
    x, w, b, t = make_linear("int", np.float32, n=900, d=16, v=40)
    weight = np.linspace(0.5, 1.5, 40).astype(np.float32)
    dx = da.from_array(x, chunks=(200, 16))
    want = csoftmax.linear_cross_entropy_with_grad(x, w, t, linear_bias=b, weight=weight,
                                                   z_loss=1e-3)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        lazy = cd.linear_cross_entropy_with_grad(dx, w, t, linear_bias=b, weight=weight,
                                                 z_loss=1e-3, num_threads=1)
        got = client.compute(list(lazy), sync=True)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_holds_few_logits_chunks(reduction):
    """The loss alone runs each chunk's block as its logits arrive: with the chunks' sums
    finished by one delayed task, the scheduler computed every logits chunk of a rechunked
    input before the first block (peak: all the logits); reduced by dask's tree it holds a
    few chunks at a time."""
    n, c = 1 << 16, 129
    x = da.broadcast_to(da.from_array(np.zeros(c, np.float32)), (n, c)).rechunk((n // 8, c))
    t = da.from_array(np.broadcast_to(np.int64(7), (n,)), chunks=n // 8)
    loss = cd.cross_entropy(x, t, reduction=reduction, num_threads=1)
    values = []

    def compute():
        with dask.config.set(scheduler="synchronous"):
            values.append(float(loss.compute()))

    peak = peak_traced_bytes(compute)
    value = values[0]
    want = float(np.log(c)) * (n if reduction == "sum" else 1)
    assert value == pytest.approx(want, rel=1e-6)
    assert peak < x.nbytes / 2, f"peak {peak} bytes of {x.nbytes} bytes of logits"
