"""softmax_backward and log_softmax_backward over an axis that is not the last, read in
place by the kernels over the middle axis of (outer, C, inner) arrays
(src/stridedbackward.hpp; 16-bit through float32 scratch, src/halfstrided.hpp): every CPU
variant and the NumPy twin against the long-double reference, the vector tails, wide,
narrowed and staged blocks, special values, thread counts, streamed rows, out= and in
place, and no temporary of the input's size."""

from __future__ import annotations

import itertools

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
    make_rng,
    peak_traced_bytes,
    row_scale,
)

from csoftmax import _half
from csoftmax._dispatch import FRONTENDS

OPS = (("softmax_backward", "softmax", 0), ("log_softmax_backward", "log_softmax", 1))
OP_IDS = [name for name, _, _ in OPS]
COMPILED = ([name for name in KERNEL_FRONTENDS if name.startswith("cython-")]
            or [name for name in KERNEL_FRONTENDS if name != "numpy"])


def _inputs(fe, forward, shape, axis, dtype, rng):
    """grad_output and the forward's output over ``axis``."""
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    return g, getattr(fe, forward)(x, axis)


def _check(fe, name, g, a, axis, **kwargs):
    g0, a0 = g.copy(), a.copy()
    r = getattr(fe, name)(g, a, axis, **kwargs)
    assert_bitwise_equal(g, g0, "grad_output (unmodified)")
    assert_bitwise_equal(a, a0, "output (unmodified)")
    assert r.dtype == a.dtype and r.shape == a.shape
    # the sum over the axis carries the error: its scale is the largest |g| along it
    scale = row_scale([g], axis) * (1.0 if name == "softmax_backward" else g.shape[axis])
    assert_close(r, getattr(ref, name)(g, a, axis), a.dtype, scale,
                 what=f"{name} axis {axis}")
    return r


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(("name", "forward", "op"), OPS, ids=OP_IDS)
def test_every_axis(kernel_frontend, name, forward, op, dtype):
    rng = make_rng("strided-backward-axes", kernel_frontend.name, name, dtype)
    for axis in range(-4, 4):
        g, a = _inputs(kernel_frontend, forward, (3, 5, 7, 2), axis, dtype, rng)
        _check(kernel_frontend, name, g, a, axis)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(("name", "forward", "op"), OPS, ids=OP_IDS)
def test_blocks(kernel_frontend, name, forward, op, dtype):
    """inner 1 .. 33 and 70 (vector tails, a block and a tail), few classes over many
    positions (wide blocks and their tail), many classes (a block narrowed to keep both
    inputs within 512 KiB), far-apart rows (staged blocks)."""
    rng = make_rng("strided-backward-blocks", kernel_frontend.name, name, dtype)
    shapes = [(2, 7, inner) for inner in (*range(1, 34), 70)]
    shapes += [(2, 21, 4096 + 70), (1, 3000, 40), (1, 300, 1030), (2, 40, 700)]
    for shape in shapes:
        g, a = _inputs(kernel_frontend, forward, shape, 1, dtype, rng)
        _check(kernel_frontend, name, g, a, 1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(("name", "forward", "op"), OPS, ids=OP_IDS)
def test_special_values(kernel_frontend, name, forward, op, dtype):
    """NaN and infinities in either input stay within their position (its slice of the
    axis), as the row kernels: the same values as the rows path on the moved arrays."""
    rng = make_rng("strided-backward-special", kernel_frontend.name, name, dtype)
    g, a = _inputs(kernel_frontend, forward, (2, 9, 600), 1, dtype, rng)
    g[0, 3, 5] = np.nan
    g[1, :, 7] = np.inf
    a[0, 2, 9] = np.nan
    a[1, 4, 11] = -np.inf
    fn = getattr(kernel_frontend, name)
    r = fn(g, a, 1)
    moved = fn(np.moveaxis(g, 1, -1).copy(), np.moveaxis(a, 1, -1).copy())
    bad = np.zeros(r.shape, bool)
    bad[0, :, 5] = bad[1, :, 7] = bad[0, :, 9] = bad[1, :, 11] = True
    assert_bitwise_equal(np.isnan(r), np.isnan(np.moveaxis(moved, -1, 1)), "NaN positions")
    assert np.isfinite(r[~bad]).all()
    assert_close(r[~bad], np.moveaxis(moved, -1, 1)[~bad], dtype,
                 row_scale([g[np.isfinite(g)]]) * 9)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(("name", "forward", "op"), OPS, ids=OP_IDS)
def test_threads_out_in_place(kernel_frontend, name, forward, op, dtype):
    """The same bits at every thread count, into out=, in place over either input, and
    from other layouts of the same values."""
    rng = make_rng("strided-backward-threads", kernel_frontend.name, name, dtype)
    fn = getattr(kernel_frontend, name)
    # (1, 4096, 64): one outer index in blocks narrower than the forward's (a team of
    # threads where the forward has one unit)
    for shape in ((4, 64, 130), (1, 1000, 600), (3, 3000, 7), (1, 4096, 64)):
        g, a = _inputs(kernel_frontend, forward, shape, 1, dtype, rng)
        want = fn(g, a, 1, num_threads=1)
        for n in (2, 3):
            assert_bitwise_equal(fn(g, a, 1, num_threads=n), want, f"{n} threads")
        out = np.empty_like(a)
        assert fn(g, a, 1, out=out) is out
        assert_bitwise_equal(out, want, "out=")
        for which in (0, 1):
            args = [g.copy(), a.copy()]
            assert fn(*args, 1, out=args[which]) is args[which]
            assert_bitwise_equal(args[which], want, f"in place over input {which}")
        assert_bitwise_equal(fn(np.asfortranarray(g), np.asfortranarray(a), 1), want,
                             "Fortran order")


@pytest.mark.skipif(not BOTH_FRONTENDS, reason="needs the compiled kernels")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(("name", "forward", "op"), OPS, ids=OP_IDS)
def test_numpy_twin_agrees(name, forward, op, dtype):
    rng = make_rng("strided-backward-twin", name, dtype)
    g, a = _inputs(FRONTENDS["numpy"], forward, (5, 33, 210), 1, dtype, rng)
    twin = getattr(FRONTENDS["numpy"], name)(g, a, 1)
    assert_close(getattr(FRONTENDS["cython"], name)(g, a, 1), twin, dtype,
                 row_scale([g], 1) * 33)


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_streamed_rows_same_bits(name, dtype):
    """Outputs of 8 MiB or more are streamed (threshold 0 here): the rows of staged blocks
    (inner 1030 and 1024) and the contiguous span of a block that holds all of an outer
    index's positions (inner 64 and less, written in place too).  The plain stores' bits,
    at every offset of the output from a cache line (rows of whole lines off the lines: a
    short first block puts the others on them; a span's lines carried across its rows)."""
    k = KERNEL_FRONTENDS[name].kernels
    rng = make_rng("strided-backward-stream", name, dtype)
    default = k.strided_stream_bytes()
    try:
        shapes = [(2, 30, 1030), (2, 30, 1024), (3, 40, 64), (2, 50, 7), (3, 9, 16)]
        for shape, op, offset in itertools.product(shapes, (0, 1), (0, 1, 4)):
            g = rng.standard_normal(shape).astype(dtype)
            a = rng.random(shape).astype(dtype)
            buf = np.empty(a.size + 16, dtype)
            start = (-buf.ctypes.data // a.itemsize) % (64 // a.itemsize) + offset
            out = buf[start:start + a.size].reshape(shape)
            k.strided_stream_bytes(default)
            k.backward_strided(op, g, a, out, 2)
            plain = out.copy()
            k.strided_stream_bytes(0)
            k.backward_strided(op, g, a, out, 2)
            assert_bitwise_equal(out, plain, f"{shape}, op {op}, offset {offset}")
            for which, inp in enumerate((g, a)):
                inp = inp.copy()
                k.backward_strided(op, *((inp, a) if which == 0 else (g, inp)), inp, 2)
                assert_bitwise_equal(inp, plain, f"{shape}, op {op}, into input {which}")
    finally:
        k.strided_stream_bytes(default)


@pytest.mark.parametrize(("name", "forward", "op"), OPS, ids=OP_IDS)
def test_no_moved_copies(kernel_frontend, name, forward, op):
    """Over axis 1 the only array of the input's size that is allocated is the result (the
    rows path allocated three: both inputs and the result with the axis moved last)."""
    if kernel_frontend.name == "numpy":
        pytest.skip("the NumPy twin moves the axis (copies)")
    rng = make_rng("strided-backward-memory", name)
    g, a = _inputs(kernel_frontend, forward, (16, 200, 256), 1, np.float32, rng)
    fn = getattr(kernel_frontend, name)
    fn(g, a, 1)
    peak = peak_traced_bytes(lambda: fn(g, a, 1, num_threads=2))
    assert peak < 1.25 * a.nbytes, f"peak {peak} bytes for a result of {a.nbytes}"


# ---- float16 and bfloat16 -----------------------------------------------------------------

ml_dtypes = pytest.importorskip("ml_dtypes")
HALF = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
KIND = {np.dtype(np.float16): _half.F16, np.dtype(ml_dtypes.bfloat16): _half.BF16}


def _round(r32, dtype):
    out = np.empty(r32.shape, np.uint16)
    _half.store_numpy(r32, out, KIND[dtype])
    return out.view(dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("outer", "classes", "inner"),
                         [(2, 1, 70), (3, 7, 63), (2, 21, 1500), (1, 1000, 130),
                          (2, 9000, 3)], ids=str)
@pytest.mark.parametrize("dtype", list(HALF), ids=list(HALF))
def test_16bit_middle_axis(kernel_frontend, dtype, outer, classes, inner, threads):
    """16-bit inputs over an axis that is not the last read in place block by block (up to
    HALF_STRIDED_CLASSES classes; past them through a moved copy): the float32 call over
    the same axis on the converted inputs, rounded once, bit for bit; out= and in place."""
    fe = kernel_frontend
    dt = HALF[dtype]
    rng = make_rng("strided-backward-16", fe.name, dtype, outer, classes, inner)
    shape = (outer, classes, inner)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    g = rng.standard_normal(shape).astype(dt)
    g[0, 0, 0] = np.nan
    for name, forward, _ in OPS:
        a = getattr(fe, forward)(x, 1).astype(dt)
        fn = getattr(fe, name)
        want = _round(fn(g.astype(np.float32), a.astype(np.float32), 1, num_threads=threads),
                      dt)
        got = fn(g, a, 1, num_threads=threads)
        assert got.dtype == dt
        assert_bitwise_equal(got, want, name)
        for which in (0, 1):
            args = [g.copy(), a.copy()]
            assert fn(*args, 1, out=args[which], num_threads=threads) is args[which]
            assert_bitwise_equal(args[which], want, f"{name} in place over input {which}")
