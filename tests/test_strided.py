"""softmax, log_softmax, logsumexp over an axis that is not the last, and the
kernels over the middle axis of (outer, C, inner) arrays (src/strided.hpp):
every CPU variant and the NumPy twin against the float64 reference, special
values, tails of the vector blocks, staged blocks, thread counts, out= and in
place; cross_entropy_index_strided against the row kernel on the moved array."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from arrays import (
    BOTH_FRONTENDS,
    FLOAT_DTYPES,
    FLOAT_IDS,
    KERNEL_FRONTENDS,
    assert_bitwise_equal,
    assert_close,
    row_scale,
    special,
)

from csoftmax._dispatch import FRONTENDS

FUNCS = ("softmax", "log_softmax", "logsumexp")


def _expected(name, x, axis):
    return getattr(ref, name)(x.astype(np.float64), axis)


def _check(frontend, name, x, axis, **kwargs):
    before = x.copy()
    r = getattr(frontend, name)(x, axis, **kwargs)
    assert_bitwise_equal(x, before, "input (unmodified)")
    scale = 1.0 if name == "softmax" else row_scale([x], axis, keepdims=name != "logsumexp")
    assert_close(r, _expected(name, x, axis), x.dtype, scale, what=f"{name} axis {axis}")
    assert np.asarray(r).dtype == x.dtype
    return r


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("name", FUNCS)
def test_every_axis(kernel_frontend, name, dtype, rng):
    x = (rng.standard_normal((3, 5, 7, 2)) * 3).astype(dtype)
    for axis in range(-4, 4):
        _check(kernel_frontend, name, x, axis)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_inner_sizes(kernel_frontend, dtype, rng):
    # inner 1 .. 33: vector tails of every length; 70: a full block and a tail
    for inner in [*range(1, 34), 70]:
        x = (rng.standard_normal((2, 7, inner)) * 3).astype(dtype)
        for name in FUNCS:
            _check(kernel_frontend, name, x, 1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", [(2, 9), (3, 70), (1, 600)], ids=str)
def test_special_values(kernel_frontend, dtype, shape, rng):
    """Slices (along axis 1) with NaN, +-inf, all -inf; inner 600 is a staged block."""
    rows = special((shape[0], shape[1], 8), rng)       # the special slices along the last axis
    x = np.ascontiguousarray(np.moveaxis(rows, -1, 1)).astype(dtype)   # ... now along axis 1
    for name in FUNCS:
        _check(kernel_frontend, name, x, 1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_special_values_in_wide_blocks(kernel_frontend, dtype, rng):
    """Few classes over a long inner axis: staged blocks of 1024 positions (float32),
    whose logs are one vector loop (log_ge1) and whose positions with an infinite max
    are redone apart; special positions in the first, a middle and the last vector."""
    x = (rng.standard_normal((2, 10, 4096)) * 3).astype(dtype)
    x[0, :, 0] = -np.inf                      # all -inf
    x[0, 3, 100] = np.inf                     # a +inf max
    x[0, 3, 1500], x[0, 7, 1500] = np.inf, np.nan   # +inf max and a NaN
    x[1, 5, 2049] = np.nan
    x[1, :, 3000] = -np.inf
    x[1, 2, 3000] = 0.0                       # all -inf but one
    x[1, :, 4095] = -np.inf
    x[1, 9, 1023] = -np.inf                   # one -inf among finite values
    for name in FUNCS:
        _check(kernel_frontend, name, x, 1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape, axis", [((64, 1000, 64), 1), ((1000, 4096), 0)], ids=str)
def test_large(kernel_frontend, dtype, shape, axis, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    r = kernel_frontend.softmax(x, axis)
    xd = x.astype(np.float64)
    e = np.exp(xd - xd.max(axis, keepdims=True))
    assert_close(r, e / e.sum(axis, keepdims=True), dtype)
    lse = kernel_frontend.logsumexp(x, axis)
    assert_close(lse, np.log(e.sum(axis)) + xd.max(axis), dtype, np.abs(xd).max(axis))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", [(4, 64, 130), (1, 40, 1000), (3, 3000, 7)], ids=str)
def test_threads_bitwise(kernel_frontend, dtype, shape, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    x[0, :, 0] = np.nan
    x[-1, 1, -1] = np.inf
    for name in FUNCS:
        fn = getattr(kernel_frontend, name)
        one = fn(x, 1, num_threads=1)
        for n in (2, 3):
            assert_bitwise_equal(fn(x, 1, num_threads=n), one, f"{name} {n} threads")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("name", ("softmax", "log_softmax"))
def test_out_and_in_place(kernel_frontend, name, dtype, rng):
    x = (rng.standard_normal((3, 40, 90)) * 3).astype(dtype)
    fn = getattr(kernel_frontend, name)
    want = fn(x, 1)
    out = np.empty_like(x)
    assert fn(x, 1, out=out) is out
    assert_bitwise_equal(out, want)
    y = x.copy()
    assert fn(y, 1, out=y) is y
    assert_bitwise_equal(y, want)
    # other layouts of the same values: the same result
    assert_bitwise_equal(fn(np.asfortranarray(x), 1), want)
    assert_bitwise_equal(fn(x[:, :, ::-1], 1)[:, :, ::-1], want)


@pytest.mark.skipif(not BOTH_FRONTENDS, reason="needs the compiled kernels")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_numpy_twin_agrees(dtype, rng):
    x = (rng.standard_normal((5, 33, 21)) * 3).astype(dtype)
    x[0, :, 0] = -np.inf
    x[1, 2, 3] = np.nan
    for name in FUNCS:
        for axis in (0, 1):
            a = getattr(FRONTENDS["cython"], name)(x, axis)
            b = getattr(FRONTENDS["numpy"], name)(x, axis)
            scale = 1.0 if name == "softmax" else row_scale([x], axis, name != "logsumexp")
            assert_close(a, b, dtype, scale, what=name)


# ---------------------------------------------------------------------------
# cross-entropy over the middle axis, against the row kernel on the moved array

def _moved(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, x.shape[1])


def _ce_case(rng, shape, dtype, label_dtype, ignore_index):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    outer, c, inner = shape
    t = rng.integers(0, c, size=(outer, inner)).astype(label_dtype)
    t.flat[::5] = ignore_index
    x[:, :, 0] = np.nan   # the NaN positions ...
    t[:, 0] = ignore_index  # ... are ignored: loss 0, gradient 0
    return x, t


def _ce_tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("label_dtype", (np.int32, np.int64))
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 11, 70), (1, 6, 600), (2, 3, 1)], ids=str)
@pytest.mark.parametrize("weighted", (False, True), ids=("", "weight"))
@pytest.mark.parametrize("smoothing", (0.0, 0.2))
@pytest.mark.parametrize("grad_mode", ("grad", "none", "in place"))
def test_cross_entropy_index_strided(kernel_frontend, dtype, label_dtype, shape, weighted,
                                     smoothing, grad_mode, rng):
    k = kernel_frontend.kernels
    ignore_index = -100
    x, t = _ce_case(rng, shape, dtype, label_dtype, ignore_index)
    c = shape[1]
    w = (rng.random(c) + 0.5).astype(dtype) if weighted else None
    n = shape[0] * shape[2]
    want_loss = np.empty(n)
    want_grad = np.empty((n, c), dtype)
    want_total = k.cross_entropy_index_rows(_moved(x), t.reshape(-1), w, ignore_index,
                                            smoothing, 0.5, want_loss, want_grad, 1)
    loss = np.empty(n)
    if grad_mode == "none":
        grad = None
        total = k.cross_entropy_index_strided(x, t, w, ignore_index, smoothing, 0.5, loss,
                                              None, 2)
    else:
        xin = x.copy()
        grad = xin if grad_mode == "in place" else np.empty_like(x)
        total = k.cross_entropy_index_strided(xin, t, w, ignore_index, smoothing, 0.5, loss,
                                              grad, 2)
    tol = _ce_tol(dtype)
    np.testing.assert_allclose(loss, want_loss, **tol)
    np.testing.assert_allclose(total, want_total, **tol)
    assert np.all(loss[(t == ignore_index).reshape(-1)] == 0.0)
    if grad is not None:
        np.testing.assert_allclose(_moved(grad), want_grad, **tol)
        assert np.all(np.moveaxis(grad, 1, -1)[t == ignore_index] == 0.0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", [(4, 64, 130), (1, 40, 1000)], ids=str)
def test_cross_entropy_strided_threads_bitwise(kernel_frontend, dtype, shape, rng):
    k = kernel_frontend.kernels
    x, t = _ce_case(rng, shape, dtype, np.int64, -1)
    compiled = kernel_frontend.name != "numpy"
    if compiled:  # the twin relies on label_summary's check
        t[0, 1] = shape[1] + 3  # out of range: defensively NaN
    w = (rng.random(shape[1]) + 0.5).astype(dtype)
    n = shape[0] * shape[2]
    results = []
    for threads in (1, 2, 3):
        loss, grad = np.empty(n), np.empty_like(x)
        total = k.cross_entropy_index_strided(x, t, w, -1, 0.1, 1.0, loss, grad, threads)
        results.append((np.float64(total), loss, grad))
    if compiled:
        assert np.isnan(results[0][1][1]) and np.isnan(results[0][2][0, :, 1]).all()
    for total, loss, grad in results[1:]:
        assert_bitwise_equal(loss, results[0][1], "loss")
        assert_bitwise_equal(grad, results[0][2], "grad")
        assert_bitwise_equal(total, results[0][0], "total")


# ---------------------------------------------------------------------------
# streamed rows and wide blocks (src/strided.hpp: stream_row, strided_block_bytes)

COMPILED = ([name for name in KERNEL_FRONTENDS if name.startswith("cython-")]
            or [name for name in KERNEL_FRONTENDS if name != "numpy"])


def _offset_empty(shape, dtype, offset):
    """An empty array whose first element lies offset elements past a 64-byte line."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(int(np.prod(shape)) * itemsize + 64 + offset * itemsize, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset * itemsize
    return raw[start:start + int(np.prod(shape)) * itemsize].view(dtype).reshape(shape)


def _strided_outputs(k, x, t, y, offset):
    """Every strided kernel's output (into arrays offset elements off a line)."""
    outer, c, inner = x.shape
    n = outer * inner
    w = (np.arange(c) % 3 + 0.5).astype(x.dtype)
    res = {}
    for name in ("softmax_strided", "log_softmax_strided"):
        out = _offset_empty(x.shape, x.dtype, offset)
        getattr(k, name)(x, out, 2)
        res[name] = out.copy()
    for label, kwargs in (("plain", {}), ("capped", {"softcap": 3.0}),
                          ("z-loss", {"z_loss": 1e-3, "z_scale": 0.5})):
        loss, grad = np.empty(n), _offset_empty(x.shape, x.dtype, offset)
        total = k.cross_entropy_index_strided(x, t, w, -1, 0.1, 0.5, loss, grad, 2, **kwargs)
        res[f"index {label}"] = (np.float64(total), loss, grad.copy())
        loss, grad = np.empty(n), _offset_empty(x.shape, x.dtype, offset)
        total = k.cross_entropy_prob_strided(x, y, w, 0.1, 0.5, loss, grad, 2, **kwargs)
        res[f"prob {label}"] = (np.float64(total), loss, grad.copy())
    return res


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", [(2, 21, 2118), (1, 300, 1024), (2, 5, 5000)], ids=str)
def test_streamed_rows_same_bits(name, dtype, shape, rng):
    """Rows streamed with non-temporal stores (threshold 0 here; outputs of 8 MiB or more by
    default) have the plain stores' bits, at every offset of the output from a cache line:
    wide blocks (partial lines at their ends), narrow ones (streamed on whole lines only),
    their tails, ignored and out-of-range labels, NaN positions, the soft cap and z-loss."""
    k = KERNEL_FRONTENDS[name].kernels
    x, t = _ce_case(rng, shape, dtype, np.int64, -1)
    t[0, 1] = shape[1] + 3  # out of range: NaN loss and gradient
    y = rng.random(shape).astype(dtype)
    y /= y.sum(1, keepdims=True)
    default = k.strided_stream_bytes()
    assert default >= 1 << 20
    for offset in (0, 1, 4):
        plain = _strided_outputs(k, x, t, y, offset)
        try:
            k.strided_stream_bytes(0)
            streamed = _strided_outputs(k, x, t, y, offset)
        finally:
            k.strided_stream_bytes(default)
        for key, want in plain.items():
            for got, ref_ in zip(streamed[key] if isinstance(want, tuple) else (streamed[key],),
                                 want if isinstance(want, tuple) else (want,)):
                assert_bitwise_equal(got, ref_, f"{key}, offset {offset}")
    assert k.strided_stream_bytes() == default


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", [(3, 21, 4096 + 70), (2, 33, 3000), (1, 8, 700)], ids=str)
def test_wide_blocks(kernel_frontend, dtype, shape, rng):
    """Few classes over many positions take blocks of up to 4 KiB of positions (a full one,
    narrower ones and a tail here): the same values as the row kernel on the moved array,
    and the same bits at every thread count."""
    k = kernel_frontend.kernels
    x, t = _ce_case(rng, shape, dtype, np.int64, -1)
    n = shape[0] * shape[2]
    want_loss, want_grad = np.empty(n), np.empty((n, shape[1]), dtype)
    k.cross_entropy_index_rows(_moved(x), t.reshape(-1), None, -1, 0.0, 1.0, want_loss,
                               want_grad, 1)
    first = None
    for threads in (1, 2, 3):
        loss, grad = np.empty(n), np.empty_like(x)
        k.cross_entropy_index_strided(x, t, None, -1, 0.0, 1.0, loss, grad, threads)
        if first is None:
            first = loss, grad
            np.testing.assert_allclose(loss, want_loss, **_ce_tol(dtype))
            np.testing.assert_allclose(_moved(grad), want_grad, **_ce_tol(dtype))
        else:
            assert_bitwise_equal(loss, first[0], f"loss, {threads} threads")
            assert_bitwise_equal(grad, first[1], f"grad, {threads} threads")
    for name in FUNCS:
        _check(kernel_frontend, name, x, 1)
