"""float16 and bfloat16: conversions and the 16-bit kernels (src/half.hpp, src/half.pxi).

* The conversions of every compiled variant and of the NumPy twin: all 65536 16-bit
  patterns to float32 (exact), and float32 to 16 bits on the rounding boundaries next
  to every 16-bit value, against NumPy's float16 and ml_dtypes' bfloat16 casts, and
  bitwise the same across variants (NaN payloads included).
* Every 16-bit kernel gives the float32 computation on the converted input rounded once,
  bit for bit (the float32 kernels of the same variant as the reference), at any
  thread count; per-row losses and their sum exactly the float32 kernels' doubles.
* The public functions: dtypes kept, out= and in place, other axes, masks, the loss
  rounded once from double, both backends close, ml_dtypes absent: a TypeError.
"""

from __future__ import annotations

import numpy as np
import pytest
from arrays import KERNEL_FRONTENDS, assert_bitwise_equal, make_rng, peak_traced_bytes

from csoftmax import _half

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
DTYPES = {"float16": F16, "bfloat16": BF16}
KIND = {F16: _half.F16, BF16: _half.BF16}


def _kernels(name):
    return KERNEL_FRONTENDS[name].kernels


# ---------------------------------------------------------------------------
# conversions

ALL_BITS = np.arange(1 << 16, dtype=np.uint16)


def _boundary_floats():
    """float32 values next to every float16/bfloat16 rounding decision: each 16-bit
    value widened, +-1 and 2 ulp around it, the midpoints to the next value and +-1
    ulp around them; plus random bit patterns."""
    f = np.concatenate([_half.load_numpy(ALL_BITS, _half.F16),
                        _half.load_numpy(ALL_BITS, _half.BF16)])
    nxt = np.concatenate([_half.load_numpy(ALL_BITS + np.uint16(1), _half.F16),
                          _half.load_numpy(ALL_BITS + np.uint16(1), _half.BF16)])
    with np.errstate(invalid="ignore", over="ignore"):
        mid = ((f.astype(np.float64) + nxt.astype(np.float64)) / 2).astype(np.float32)
    u = np.concatenate([f.view(np.uint32), mid.view(np.uint32)]).astype(np.int64)
    u = (u[:, None] + np.arange(-2, 3)).ravel() % (1 << 32)
    rand = make_rng("half-bits").integers(0, 1 << 32, size=1 << 19)
    return np.concatenate([u, rand]).astype(np.uint32).view(np.float32)


FLOATS = _boundary_floats()


def _same_or_both_nan(got, want, what):
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=what)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan] if got.dtype == np.float32
                                  else got.view(np.uint16)[~nan],
                                  want.view(np.uint32)[~nan] if want.dtype == np.float32
                                  else want.view(np.uint16)[~nan], err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_load_all_bits(dtype):
    want = ALL_BITS.view(dtype).astype(np.float32)
    results = {}
    for name in KERNEL_FRONTENDS:
        got = np.empty(ALL_BITS.size, np.float32)
        _kernels(name).half_load_array(ALL_BITS, got, KIND[dtype], 2)
        _same_or_both_nan(got, want, f"{name} {dtype}")
        results[name] = got
    first = next(iter(results.values()))
    for name, got in results.items():  # NaN bits too: every variant the same
        assert_bitwise_equal(got, first, name)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_store_rounding_boundaries(dtype):
    with np.errstate(over="ignore", invalid="ignore"):
        want = FLOATS.astype(dtype)  # NumPy's float16, ml_dtypes' bfloat16: nearest even
    results = {}
    for name in KERNEL_FRONTENDS:
        got = np.empty(FLOATS.size, np.uint16)
        _kernels(name).half_store_array(FLOATS, got, KIND[dtype], 2)
        _same_or_both_nan(got.view(dtype), want, f"{name} {dtype}")
        results[name] = got
    first = next(iter(results.values()))
    for name, got in results.items():
        assert_bitwise_equal(got, first, name)
    nan = np.isnan(FLOATS)  # NaN stays NaN, quiet, sign kept
    quiet = 0x0200 if dtype == F16 else 0x0040
    assert np.all(first[nan] & quiet)
    np.testing.assert_array_equal(first[nan] >> 15, FLOATS[nan].view(np.uint32) >> 31)


def test_round_once_from_double():
    # 1 + 2**-8 + 2**-30: above the midpoint of two bfloat16 values; through float32
    # it becomes the midpoint, and rounds to even (down): rounding twice
    v = 1.0 + 2.0**-8 + 2.0**-30
    assert float(_half.round_once(v, BF16)) == 1.0 + 2.0**-7
    assert _half.round_once(v, BF16).dtype == BF16
    rng = make_rng("round-once")
    x = rng.standard_normal(4096) * np.exp2(rng.integers(-140, 130, 4096))
    x = np.concatenate([x, [np.inf, -np.inf, np.nan, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45]])
    got = _half.round_once(x, BF16).astype(np.float64)
    with np.errstate(invalid="ignore"):
        grid = np.unique(ALL_BITS.view(BF16).astype(np.float64))
    grid = grid[np.isfinite(grid)]
    finite = np.isfinite(x) & (np.abs(x) < 3.38e38)
    # the nearest bfloat16: no other value is closer
    err = np.abs(got[finite] - x[finite])
    nearest = np.abs(grid[np.clip(np.searchsorted(grid, x[finite]), 1, grid.size - 1)]
                     - x[finite])
    below = np.abs(grid[np.clip(np.searchsorted(grid, x[finite]) - 1, 0, grid.size - 1)]
                   - x[finite])
    assert np.all(err <= np.minimum(nearest, below))
    assert np.isnan(got[np.isnan(x)]).all()
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(_half.round_once(x, F16), x.astype(F16))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_once_python_floats(dtype):
    """A reduced loss (a Python float) rounded to float32/float64 by the scalar cast: the
    array cast's value and type, and no overflow warning where it becomes +-inf."""
    top = float(np.finfo(np.float32).max)
    for v in [0.5, -2.5e-45, 1e39, -1e300, np.nan, np.inf, -np.inf, top, -top,
              np.nextafter(top, np.inf), 3.4028235677973366e38, 1e-320]:
        got = _half.round_once(v, np.dtype(dtype))
        with np.errstate(over="ignore"):
            want = np.asarray(v, np.float64).astype(dtype)[()]
        assert type(got) is np.dtype(dtype).type
        assert got.tobytes() == want.tobytes(), v


# ---------------------------------------------------------------------------
# the kernels: the float32 kernels' results rounded once, bit for bit

#: every compiled variant (not "cython" too: it is one of them)
COMPILED = ([name for name in KERNEL_FRONTENDS if name.startswith("cython-")]
            or [name for name in KERNEL_FRONTENDS if name != "numpy"])
#: (rows, classes): short rows (tiles), rows of 128-255 bytes in float32 (tiles but for
#: softmax_backward), long rows, a row longer than a block, rows split over threads
SHAPES = [(37, 5), (70, 31), (50, 47), (64, 1000), (9, 40_000), (2, 40_000)]


def _inputs(shape, dtype, rng, extreme):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    if extreme:
        k = rng.random(shape)
        x[k < 0.03] = -np.inf
        x[(k > 0.5) & (k < 0.52)] = 6e4 if dtype == F16 else 3e38   # near the overflow
        x[(k > 0.6) & (k < 0.62)] = 3e-6                          # float16 subnormals
        x[(k > 0.7) & (k < 0.71)] = -7e4 if dtype == F16 else -1e38
        x[0, 1] = np.nan
        if shape[0] > 3:
            x[2] = -np.inf
            x[3, 0] = np.inf
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def _round(r32, dtype):
    out = np.empty(r32.shape, np.uint16)
    _half.store_numpy(r32, out, KIND[dtype])
    return out


@pytest.mark.parametrize("extreme", [False, True], ids=["normal", "extreme"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", COMPILED)
def test_rows_kernels_round_float32_once(name, dtype, shape, extreme):
    k = _kernels(name)
    rng = make_rng(f"{name}{dtype}{shape}{extreme}")
    x = _inputs(shape, dtype, rng, extreme)
    x32 = x.astype(np.float32)
    kind = KIND[dtype]
    for threads in (1, 3):
        for op, rows in ((0, k.softmax_rows), (1, k.log_softmax_rows)):
            want = np.empty(shape, np.float32)
            rows(x32, want, threads)
            got = np.empty(shape, np.uint16)
            k.half_rows(op, x.view(np.uint16), got, kind, threads)
            assert_bitwise_equal(got, _round(want, dtype), f"op {op} threads {threads}")
        want = np.empty(shape[0], np.float32)
        k.logsumexp_rows(x32, want, threads)
        got = np.empty(shape[0], np.float32)
        k.half_logsumexp_rows(x.view(np.uint16), got, kind, threads)
        assert_bitwise_equal(got, want, "logsumexp")
        g = (rng.standard_normal(shape)).astype(dtype)
        for op, rows in ((0, k.softmax_backward_rows), (1, k.log_softmax_backward_rows)):
            want = np.empty(shape, np.float32)
            rows(g.astype(np.float32), x32, want, threads)
            got = np.empty(shape, np.uint16)
            k.half_backward_rows(op, g.view(np.uint16), x.view(np.uint16), got, kind, threads)
            assert_bitwise_equal(got, _round(want, dtype), f"backward {op}")


CE_OPTIONS = [
    {},
    {"label_smoothing": 0.1, "weight": True},
    {"z_loss": 1e-3, "softcap": 7.0},
    {"softcap": 5.0, "row_acc": True},
    {"z_loss": 1e-4, "row_acc": True, "weight": True},
]


def _ce_call(kernel, logits, target, opts, grad, threads, extra_args=()):
    n = logits.shape[0]
    c = logits.shape[1]
    w = (np.linspace(0.5, 2.0, c).astype(np.float32) if opts.get("weight") else None)
    row_loss = np.empty(n)
    extra = {}
    if "z_loss" in opts:
        extra.update(z_loss=opts["z_loss"], z_scale=0.5, row_z=np.empty(n))
    if "softcap" in opts:
        extra["softcap"] = opts["softcap"]
    if opts.get("row_acc"):
        extra["row_acc"] = np.empty(n)
    if target.ndim == 1:
        total = kernel(logits, target, w, -100, opts.get("label_smoothing", 0.0), 0.25,
                       row_loss, grad, *extra_args, threads, **extra)
    else:
        extra.pop("row_acc", None)
        total = kernel(logits, target, w, opts.get("label_smoothing", 0.0), 0.25, row_loss,
                       grad, *extra_args, threads, **extra)
    return total, row_loss, extra


@pytest.mark.parametrize("opts", CE_OPTIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", COMPILED)
def test_cross_entropy_kernels_round_float32_once(name, dtype, shape, opts):
    k = _kernels(name)
    rng = make_rng(f"ce{name}{dtype}{shape}{opts}")
    x = _inputs(shape, dtype, rng, extreme=True)
    x32 = x.astype(np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    labels[::5] = -100
    probs16 = rng.random(shape).astype(dtype)
    kind = KIND[dtype]
    for threads in (1, 3):
        for target, target16 in ((labels, labels), (probs16.astype(np.float32),
                                                     probs16.view(np.uint16))):
            if target.ndim == 1:
                k32, k16 = k.cross_entropy_index_rows, k.half_cross_entropy_index_rows
            else:
                k32, k16 = k.cross_entropy_prob_rows, k.half_cross_entropy_prob_rows
            g32 = np.empty(shape, np.float32)
            want = _ce_call(k32, x32, target, opts, g32, threads)
            g16 = np.empty(shape, np.uint16)
            got = _ce_call(k16, x.view(np.uint16), target16, opts, g16, threads, (kind,))
            what = f"threads {threads} target {target.ndim}-D"
            assert got[0] == want[0] or (np.isnan(got[0]) and np.isnan(want[0])), what
            assert_bitwise_equal(got[1], want[1], what)
            for key in ("row_z", "row_acc"):
                if key in want[2]:
                    assert_bitwise_equal(got[2][key], want[2][key], f"{what} {key}")
            assert_bitwise_equal(g16, _round(g32, dtype), what)
            # the loss alone, and in place (grad = logits)
            assert _ce_call(k16, x.view(np.uint16), target16, opts, None, threads,
                            (kind,))[1].tobytes() == want[1].tobytes()
            inplace = x.copy().view(np.uint16)
            _ce_call(k16, inplace, target16, opts, inplace, threads, (kind,))
            assert_bitwise_equal(inplace, g16, what + " in place")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", COMPILED)
def test_streamed_outputs_same_bits(name, dtype):
    """Outputs written with non-temporal stores (threshold 0 here; large
    outputs by default) have the plain stores' bits, at any alignment of the
    output (its first element at 0, 2, 4 ... bytes past a vector boundary, or
    at an odd address, which is not streamed)."""
    k = _kernels(name)
    rng = make_rng(f"stream{name}{dtype}")
    shape = (6, 1003)
    x = _inputs(shape, dtype, rng, extreme=True)
    labels = rng.integers(0, shape[1], shape[0])
    labels[1] = -100
    kind = KIND[dtype]
    plain_ce = np.empty(shape, np.uint16)
    _ce_call(k.half_cross_entropy_index_rows, x.view(np.uint16), labels, {}, plain_ce, 1,
             (kind,))
    plain_sm = np.empty(shape, np.uint16)
    k.half_rows(0, x.view(np.uint16), plain_sm, kind, 1)
    default = k.half_stream_bytes()
    assert default >= 1 << 20
    try:
        k.half_stream_bytes(0, 0)
        for offset in (0, 2, 6, 30, 1):
            raw = np.zeros(plain_ce.nbytes + 64 + offset, np.uint8)
            start = (-raw.ctypes.data) % 64 + offset
            out = raw[start:start + plain_ce.nbytes].view(np.uint16).reshape(shape)
            got = _ce_call(k.half_cross_entropy_index_rows, x.view(np.uint16), labels, {},
                           out, 1, (kind,))
            assert_bitwise_equal(out, plain_ce, f"cross-entropy, offset {offset}")
            assert np.isfinite(got[0]) or np.isnan(got[0])
            k.half_rows(0, x.view(np.uint16), out, kind, 2)
            assert_bitwise_equal(out, plain_sm, f"softmax, offset {offset}")
    finally:
        k.half_stream_bytes(default, 8192)
    assert k.half_stream_bytes() == default


@pytest.mark.parametrize("name", COMPILED)
def test_bf16_native_rounding_same_bits(name):
    """Where a variant rounds bfloat16 by AVX512_BF16's vcvtne2ps2bf16 (the AVX-512
    kernels on a CPU that has it), which flushes float32 subnormals (such pairs of vectors
    are rounded in software), the bits are those of the software rounding, switched off:
    the rounding boundaries and random bit patterns, softmax and the cross-entropy gradient
    of rows whose probabilities fall below float32's normal range (N(0, 40^2) logits),
    streamed and not, and over a middle axis."""
    k = _kernels(name)
    if not hasattr(k, "half_bf16_native") or not k.half_bf16_native():
        pytest.skip("this variant rounds bfloat16 in software on this CPU")
    rng = make_rng(f"bf16-native{name}")
    shape = (7, 3000)
    x = (rng.standard_normal(shape) * 40).astype(np.float32)
    x[1, ::5] = -np.inf
    x[2, 3] = np.nan
    x16 = _round(x, BF16)
    labels = rng.integers(0, shape[1], shape[0])
    labels[4] = -100
    x3 = x16.view(BF16).reshape(7, 30, 100)
    t3 = rng.integers(0, 30, (7, 100))

    def results():
        got = [np.empty(FLOATS.size, np.uint16)]
        k.half_store_array(FLOATS, got[0], KIND[BF16], 2)
        default = k.half_stream_bytes()
        try:
            for stream in (default, 0):
                k.half_stream_bytes(stream, 0 if stream == 0 else 8192)
                ce = np.empty(shape, np.uint16)
                _ce_call(k.half_cross_entropy_index_rows, x16, labels, {}, ce, 2,
                         (KIND[BF16],))
                sm = np.empty(shape, np.uint16)
                k.half_rows(0, x16, sm, KIND[BF16], 2)
                got += [ce, sm]
        finally:
            k.half_stream_bytes(default, 8192)
        fe = KERNEL_FRONTENDS[name]
        got.append(fe.cross_entropy_with_grad(x3, t3, axis=1, num_threads=2)[1].view(np.uint16))
        got.append(fe.softmax(x3, axis=1).view(np.uint16))
        return got

    native = results()
    assert np.any((_half.load_numpy(native[1], _half.BF16) != 0)
                  & (np.abs(_half.load_numpy(native[1], _half.BF16)) < 1.2e-38))
    try:
        assert k.half_bf16_native(0)
        assert not k.half_bf16_native()
        software = results()
    finally:
        k.half_bf16_native(1)
    assert k.half_bf16_native()
    for i, (a, b) in enumerate(zip(native, software)):
        assert_bitwise_equal(a, b, f"result {i}")
    with np.errstate(over="ignore", invalid="ignore"):
        want = FLOATS.astype(BF16).view(np.uint16)
    nan = np.isnan(FLOATS)
    np.testing.assert_array_equal(native[0][~nan], want[~nan])


# ---------------------------------------------------------------------------
# the public functions

@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_public_functions(kernel_frontend, dtype):
    fe = kernel_frontend
    rng = make_rng(f"public{fe.name}{dtype}")
    x = _inputs((40, 300), dtype, rng, extreme=True)
    x32 = x.astype(np.float32)
    for fn in (fe.softmax, fe.log_softmax):
        want = _round(fn(x32), dtype).view(dtype)
        got = fn(x)
        assert got.dtype == dtype
        assert_bitwise_equal(got, want, fn.__name__)
        out = np.empty_like(x)
        assert fn(x, out=out) is out
        assert_bitwise_equal(out, want, "out=")
        inplace = x.copy()
        fn(inplace, out=inplace)
        assert_bitwise_equal(inplace, want, "in place")
        # another axis (the 16-bit strided kernels: the float32 call over that
        # axis, rounded once), a byte-swapped input, a mask
        assert_bitwise_equal(fn(x.T, axis=0), _round(fn(x32.T, axis=0), dtype).view(dtype),
                             "axis 0")
        if dtype == F16:
            assert_bitwise_equal(fn(x.astype(">f2")), want, "byte-swapped")
        keep = rng.random(x.shape) < 0.8
        want_m = _round(fn(x32, where=keep), dtype).view(dtype)
        assert_bitwise_equal(fn(x, where=keep), want_m, "where=")
    lse = fe.logsumexp(x)
    assert lse.dtype == dtype
    assert_bitwise_equal(lse, _round(fe.logsumexp(x32), dtype).view(dtype), "logsumexp")
    assert fe.logsumexp(x[0]).dtype == dtype  # a scalar
    a = fe.softmax(x)
    g = rng.standard_normal(x.shape).astype(dtype)
    got = fe.softmax_backward(g, a)
    assert got.dtype == dtype
    want = _round(fe.softmax_backward(g.astype(np.float32), a.astype(np.float32)), dtype)
    assert_bitwise_equal(got, want.view(dtype), "softmax_backward")
    got = fe.log_softmax_backward(g, a, out=g)
    assert got is g


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("outer", "classes", "inner"),
                         [(2, 1, 70), (3, 3, 63), (2, 21, 1500), (1, 40, 65), (2, 1000, 64),
                          (1, 5, 4099)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_middle_axis_16bit_in_place(kernel_frontend, dtype, outer, classes, inner, threads):
    """softmax, log_softmax and logsumexp of a 16-bit array over an axis that is not the
    last read it in place, block by block through float32 scratch (no transposed copy):
    the float32 call over the same axis, rounded once, bit for bit, with blocks of 64 to
    1024 positions and a partial last block, out= and in place."""
    fe = kernel_frontend
    rng = make_rng(f"middle16{fe.name}{dtype}{outer}{classes}{inner}")
    x = _inputs((outer * classes, inner), dtype, rng, extreme=True).reshape(outer, classes, inner)
    x32 = x.astype(np.float32)
    kw = dict(axis=1, num_threads=threads)
    for fn in (fe.softmax, fe.log_softmax):
        want = _round(fn(x32, **kw), dtype).view(dtype)
        got = fn(x, **kw)
        assert got.dtype == dtype
        assert_bitwise_equal(got, want, fn.__name__)
        out = np.empty_like(x)
        assert fn(x, out=out, **kw) is out
        assert_bitwise_equal(out, want, f"{fn.__name__} out=")
        inplace = x.copy()
        assert fn(inplace, out=inplace, **kw) is inplace
        assert_bitwise_equal(inplace, want, f"{fn.__name__} in place")
    for keepdims in (False, True):
        got = fe.logsumexp(x, keepdims=keepdims, **kw)
        assert got.dtype == dtype
        assert_bitwise_equal(got, _round(fe.logsumexp(x32, keepdims=keepdims, **kw),
                                         dtype).view(dtype), "logsumexp")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("outer", "classes", "inner"),
                         [(2, 1, 70), (3, 3, 63), (2, 21, 1500), (2, 300, 65)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_middle_axis_16bit_cross_entropy_prob(kernel_frontend, dtype, outer, classes, inner,
                                              threads):
    """Probability targets over a class axis that is not the last, 16-bit logits read in
    place, targets of the logits' dtype (read as 16 bits) or float32: the gradient is the
    float32 call's over the same axis rounded once, bit for bit; the losses within a 16-bit
    rounding of that call's."""
    fe = kernel_frontend
    rng = make_rng(f"middle16-prob{fe.name}{dtype}{outer}{classes}{inner}")
    shape = (outer, classes, inner)
    x = _inputs((outer * classes, inner), dtype, rng, extreme=False).reshape(shape)
    x32 = x.astype(np.float32)
    p32 = rng.random(shape).astype(np.float32)
    p32 /= p32.sum(axis=1, keepdims=True)
    weight = rng.random(classes).astype(np.float32) + 0.5
    tol = 2.0 ** -7 if dtype == BF16 else 2.0 ** -10
    for probs in (p32.astype(dtype), p32):
        probs32 = probs.astype(np.float32)
        for kw in ({}, {"weight": weight, "label_smoothing": 0.1},
                   {"z_loss": 1e-3, "return_z_loss": True}, {"softcap": 5.0}):
            kw = dict(kw, axis=1, reduction="none", num_threads=threads)
            r16 = fe.cross_entropy_with_grad(x, probs, **kw)
            r32 = fe.cross_entropy_with_grad(x32, probs32, **kw)
            want = _round(r32[1], dtype).view(dtype)
            assert_bitwise_equal(r16[1], want, f"grad {probs.dtype} {kw}")
            for got, ref32 in zip([r16[0], *r16[2:3]], [r32[0], *r32[2:3]]):
                np.testing.assert_allclose(np.asarray(got, np.float64),
                                           np.asarray(ref32, np.float64), rtol=tol,
                                           atol=2.0 ** -24)
            inplace = x.copy()
            fe.cross_entropy_with_grad(inplace, probs, out=inplace, **kw)
            assert_bitwise_equal(inplace, want, "in place")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_middle_axis_16bit_streamed(kernel_frontend, dtype):
    """The 16-bit kernels over a middle axis write an output larger than the caches with
    non-temporal stores, whole cache lines of rows of 1 KiB or more: forced on every
    output, into outputs whose first element is 0, 2, 16 and 30 bytes past a cache line
    (partial lines at each end of a row) and in place, softmax, log_softmax, their backward
    and the cross-entropy gradient (every option) have the bits of the plain stores', with
    blocks of 1024 and 768 positions and partial last blocks of 676 (streamed) and 36 (not)."""
    fe = kernel_frontend
    if not hasattr(fe.kernels, "half_stream_bytes"):
        pytest.skip("the NumPy twin writes no non-temporal stores")
    for classes, inner in ((21, 1700), (40, 1572)):   # blocks of 1024 and 768 positions
        _check_middle_axis_16bit_streamed(fe, dtype, classes, inner)


def _check_middle_axis_16bit_streamed(fe, dtype, classes, inner):
    k = fe.kernels
    rng = make_rng(f"middle16-stream{fe.name}{dtype}{classes}")
    shape = (2, classes, inner)
    x = _inputs((2 * classes, inner), dtype, rng, extreme=True).reshape(shape)
    g = _inputs((2 * classes, inner), dtype, rng, extreme=False).reshape(shape)
    labels = rng.integers(0, classes, (2, inner))
    labels[:, ::7] = -100
    calls = {
        "softmax": lambda out: fe.softmax(x, axis=1, out=out, num_threads=2),
        "log_softmax": lambda out: fe.log_softmax(x, axis=1, out=out),
        "softmax_backward": lambda out: fe.softmax_backward(
            g, fe.softmax(x, axis=1), axis=1, out=out, num_threads=2),
        "log_softmax_backward": lambda out: fe.log_softmax_backward(
            g, fe.log_softmax(x, axis=1), axis=1, out=out),
    }

    def cross_entropy(opts):
        return lambda out: fe.cross_entropy_with_grad(x, labels, axis=1, out=out,
                                                      num_threads=2, **opts)

    for kw in ({}, {"weight": np.linspace(0.5, 1.5, classes, dtype=np.float32),
                    "label_smoothing": 0.1}, {"z_loss": 1e-3}, {"softcap": 5.0}):
        calls[f"cross_entropy {kw}"] = cross_entropy(kw)
    plain = {}
    for name, call in calls.items():
        plain[name] = np.empty_like(x)
        call(plain[name])
    default = k.half_stream_bytes()
    try:
        k.half_stream_bytes(0, 0)
        for offset in (0, 2, 16, 30):
            raw = np.zeros(x.nbytes + 64 + offset, np.uint8)
            start = (-raw.ctypes.data) % 64 + offset
            out = raw[start:start + x.nbytes].view(dtype).reshape(shape)
            for name, call in calls.items():
                out[...] = 0
                call(out)
                assert_bitwise_equal(out, plain[name], f"{name}, offset {offset}")
        for name in ("softmax", "log_softmax"):
            inplace = x.copy()
            getattr(fe, name)(inplace, axis=1, out=inplace)
            assert_bitwise_equal(inplace, plain[name], f"{name} in place")
        inplace = x.copy()
        fe.cross_entropy_with_grad(inplace, labels, axis=1, out=inplace)
        assert_bitwise_equal(inplace, plain["cross_entropy {}"], "cross-entropy in place")
    finally:
        k.half_stream_bytes(default, 8192)


def test_middle_axis_16bit_class_limit_agrees():
    """The Python layer's limit of the 16-bit kernels over a middle axis is the kernels'
    (HALF_STRIDED_MAX_C in src/halfstrided.hpp), on every backend."""
    for fe in KERNEL_FRONTENDS.values():
        assert fe.kernels.HALF_STRIDED_CLASSES == _half.HALF_STRIDED_CLASSES


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_middle_axis_16bit_many_classes_moved(kernel_frontend, dtype):
    """Past HALF_STRIDED_CLASSES classes the 16-bit call moves the axis last (the scratch
    of a block would pass 2 MiB a thread): the float32 rows' result, rounded once."""
    fe = kernel_frontend
    classes = fe.kernels.HALF_STRIDED_CLASSES + 1
    rng = make_rng(f"middle16-many{fe.name}{dtype}")
    x = _inputs((classes, 3), dtype, rng, extreme=False)
    x32 = x.astype(np.float32)
    for fn in (fe.softmax, fe.log_softmax):
        want = _round(np.ascontiguousarray(fn(np.ascontiguousarray(x32.T)).T), dtype)
        assert_bitwise_equal(fn(x, axis=0), want.view(dtype), fn.__name__)
    want = _round(fe.logsumexp(np.ascontiguousarray(x32.T)), dtype).view(dtype)
    assert_bitwise_equal(fe.logsumexp(x, axis=0), want, "logsumexp")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("outer", "classes", "inner"),
                         [(2, 1, 70), (3, 3, 63), (2, 21, 1500), (2, 300, 65)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_middle_axis_16bit_cross_entropy(kernel_frontend, dtype, outer, classes, inner,
                                         threads):
    """Cross-entropy with class indices over a class axis that is not the last, on 16-bit
    logits read in place (no transposed copy), with every option: the gradient is the
    float32 call's over the same axis rounded once, bit for bit (out=, in place); the
    losses, the z-loss part and the accuracy that call's within a 16-bit rounding."""
    fe = kernel_frontend
    rng = make_rng(f"middle16-ce{fe.name}{dtype}{outer}{classes}{inner}")
    x = _inputs((outer * classes, inner), dtype, rng, extreme=False).reshape(outer, classes,
                                                                            inner)
    x32 = x.astype(np.float32)
    labels = rng.integers(0, classes, (outer, inner))
    labels[:, ::5] = -100
    weight = rng.random(classes).astype(np.float32) + 0.5
    tol = 2.0 ** -7 if dtype == BF16 else 2.0 ** -10
    for kw in ({}, {"weight": weight, "label_smoothing": 0.1},
               {"z_loss": 1e-3, "return_z_loss": True, "return_token_accuracy": True},
               {"softcap": 5.0}):
        for reduction in ("mean", "none"):
            kw = dict(kw, axis=1, reduction=reduction, num_threads=threads)
            r16 = fe.cross_entropy_with_grad(x, labels, **kw)
            r32 = fe.cross_entropy_with_grad(x32, labels, **kw)
            assert r16[1].dtype == dtype and r16[1].shape == x.shape
            want = _round(r32[1], dtype).view(dtype)
            assert_bitwise_equal(r16[1], want, f"grad {kw}")
            for got, ref32 in zip([r16[0], *r16[2:]], [r32[0], *r32[2:]]):
                assert np.asarray(got).dtype == dtype
                np.testing.assert_allclose(np.asarray(got, np.float64),
                                           np.asarray(ref32, np.float64), rtol=tol,
                                           atol=2.0 ** -24)  # float16's subnormal spacing
            loss_only = fe.cross_entropy(x, labels, **kw)
            assert_bitwise_equal(np.asarray(loss_only[0] if isinstance(loss_only, tuple)
                                            else loss_only), np.asarray(r16[0]), "loss alone")
            out = np.empty_like(x)
            assert fe.cross_entropy_with_grad(x, labels, out=out, **kw)[1] is out
            assert_bitwise_equal(out, want, "out=")
            inplace = x.copy()
            fe.cross_entropy_with_grad(inplace, labels, out=inplace, **kw)
            assert_bitwise_equal(inplace, want, "in place")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_public_cross_entropy(kernel_frontend, dtype, reduction):
    fe = kernel_frontend
    rng = make_rng(f"ce-public{fe.name}{dtype}{reduction}")
    x = _inputs((50, 700), dtype, rng, extreme=False)
    x32 = x.astype(np.float32)
    labels = rng.integers(0, 700, 50)
    labels[::7] = -100
    g32 = np.empty(x.shape, np.float32)
    row_loss = np.empty(50)
    scale = 1.0
    if reduction == "mean":
        scale = 1.0 / np.count_nonzero(labels != -100)
    total = fe.kernels.cross_entropy_index_rows(x32, labels, None, -100, 0.0, scale,
                                                row_loss, g32, 1)
    loss, grad = fe.cross_entropy_with_grad(x, labels, reduction=reduction)
    assert grad.dtype == dtype and loss.dtype == dtype
    assert_bitwise_equal(grad, _round(g32, dtype).view(dtype), "grad")
    if reduction == "none":
        assert_bitwise_equal(loss, _half.round_once(row_loss, dtype), "loss")
    else:
        want = total * scale if reduction == "mean" else total
        assert loss == _half.round_once(want, dtype)
        assert loss.tobytes() == _half.round_once(want, dtype).tobytes()
    assert_bitwise_equal(fe.cross_entropy(x, labels, reduction=reduction), loss, "loss alone")
    out = np.empty_like(x)
    assert fe.cross_entropy_with_grad(x, labels, reduction=reduction, out=out)[1] is out
    assert_bitwise_equal(out, grad, "out=")
    inplace = x.copy()
    fe.cross_entropy_with_grad(inplace, labels, reduction=reduction, out=inplace)
    assert_bitwise_equal(inplace, grad, "in place")
    # (N, C, d) logits, class axis 1: read in place (the 16-bit strided kernel), the
    # float32 call over the same axis rounded once
    x3 = np.ascontiguousarray(x.reshape(5, 10, 700).transpose(0, 2, 1))
    l3, g3 = fe.cross_entropy_with_grad(x3, labels.reshape(5, 10), axis=1,
                                        reduction=reduction)
    g3_32, loss3 = np.empty(x3.shape, np.float32), np.empty(50)
    total3 = fe.kernels.cross_entropy_index_strided(
        x3.astype(np.float32), labels.reshape(5, 10), None, -100, 0.0, scale, loss3, g3_32, 1)
    assert_bitwise_equal(g3, _round(g3_32, dtype).view(dtype), "axis=1")
    if reduction == "none":
        assert_bitwise_equal(l3, _half.round_once(loss3, dtype).reshape(5, 10), "axis=1 loss")
    else:
        assert l3.tobytes() == _half.round_once(
            total3 * scale if reduction == "mean" else total3, dtype).tobytes()
    # probability targets of the logits' dtype, and of float32: the same values
    probs = rng.random(x.shape).astype(dtype)
    l16, g16 = fe.cross_entropy_with_grad(x, probs, reduction=reduction)
    l32, gf = fe.cross_entropy_with_grad(x, probs.astype(np.float32), reduction=reduction)
    assert_bitwise_equal(g16, gf, "16-bit probabilities")
    assert_bitwise_equal(l16, l32, "16-bit probabilities")
    assert g16.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_backends_agree(dtype):
    from csoftmax import _dispatch

    fronts = _dispatch.FRONTENDS
    rng = make_rng(f"agree{dtype}")
    x = _inputs((64, 500), dtype, rng, extreme=False)
    labels = rng.integers(0, 500, 64)
    results = {name: (fe.softmax(x), *fe.cross_entropy_with_grad(x, labels))
               for name, fe in fronts.items()}
    ref = results["numpy"]
    tol = 2.0**-7 if dtype == BF16 else 2.0**-10
    for name, r in results.items():
        for a, b in zip(r, ref):
            assert a.dtype == b.dtype == dtype
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                       rtol=tol, atol=1e-6, err_msg=name)


def test_bfloat16_needs_ml_dtypes(monkeypatch):
    torch = pytest.importorskip("torch")
    import csoftmax

    t = torch.zeros(2, 3, dtype=torch.bfloat16)
    assert csoftmax.softmax(t).dtype == BF16  # with ml_dtypes: read as a view
    monkeypatch.setattr(_half, "_BF16", False)
    with pytest.raises(TypeError, match="ml_dtypes"):
        csoftmax.softmax(t)
    with pytest.raises(TypeError, match="ml_dtypes"):
        csoftmax.cross_entropy(t, np.zeros(2, int))
    import csoftmax.torch as ct

    with pytest.raises(TypeError, match="ml_dtypes"):
        ct.softmax(t, -1)
    # float16 needs nothing
    assert csoftmax.softmax(t.to(torch.float16)).dtype == F16


def test_ml_dtypes_imported_lazily():
    import subprocess
    import sys

    code = ("import sys, numpy as np, csoftmax; csoftmax.softmax(np.zeros((2, 3), np.float16)); "
            "assert 'ml_dtypes' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# the C fast path (src/fasthalf.pxi): taken, and the full path's bits

@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", COMPILED)
def test_fast_path(name, dtype):
    from csoftmax import _api

    fast = KERNEL_FRONTENDS[name]
    full = _api.Frontend(fast.kernels, f"full-{name}", fast=False)
    k = fast.kernels
    rng = make_rng(f"fast{name}{dtype}")
    for shape in [(1, 10), (7, 3), (33, 40), (300, 70), (2, 40_000), (1000,)]:
        x = _inputs(shape if len(shape) == 2 else (1,) + shape, dtype, rng, extreme=False)
        x = x.reshape(shape)
        assert k.fast_rows(0, x, -1, None, None) is not None  # taken
        assert k.fast_logsumexp(x, -1, None) is not None
        for fn in ("softmax", "log_softmax", "logsumexp"):
            a, b = getattr(fast, fn)(x), getattr(full, fn)(x)
            assert type(a) is type(b)
            assert_bitwise_equal(a, b, f"{fn} {shape}")
        out = np.empty_like(x)
        assert fast.softmax(x, out=out) is out
        assert_bitwise_equal(out, full.softmax(x), "out=")
        a = fast.softmax(x)
        g = rng.standard_normal(shape).astype(dtype)
        assert k.fast_backward(0, g, a, -1, None, None) is not None
        for fn in ("softmax_backward", "log_softmax_backward"):
            assert_bitwise_equal(getattr(fast, fn)(g, a), getattr(full, fn)(g, a), fn)
        c = shape[-1]
        labels = rng.integers(0, c, shape[:-1]).astype(np.int32)
        if len(shape) == 2:
            labels[::3] = -100
        probs = rng.random(shape).astype(dtype)
        targets = [labels, probs, labels.astype(np.int64)]
        if len(shape) == 1:  # one sample: the fast path takes a Python int
            targets = [int(labels), probs]
        for target in targets:
            for reduction in ("mean", "sum", "none"):
                kw = dict(reduction=reduction, label_smoothing=0.1)
                labelled = not isinstance(target, np.ndarray) or target.dtype.kind == "i"
                assert k.fast_cross_entropy(x, target, -1, -100 if labelled else -1,
                                            reduction, 0.1, None, True, None) is not None
                ignore = {} if labelled else {"ignore_index": -1}
                lf, gf = fast.cross_entropy_with_grad(x, target, **kw, **ignore)
                lo, go = full.cross_entropy_with_grad(x, target, **kw, **ignore)
                assert type(lf) is type(lo)
                assert_bitwise_equal(lf, lo, f"loss {shape} {reduction}")
                assert_bitwise_equal(gf, go, f"grad {shape} {reduction}")
                assert_bitwise_equal(fast.cross_entropy(x, target, **kw, **ignore), lo,
                                     "loss alone")
        inplace = x.copy()
        fast.cross_entropy_with_grad(inplace, targets[0], out=inplace)
        assert_bitwise_equal(inplace, full.cross_entropy_with_grad(x, targets[0])[1],
                             "in place")
    # declined: float16 with bfloat16, byte-swapped, out of another dtype
    x = _inputs((4, 8), dtype, rng, extreme=False)
    assert k.fast_rows(0, x, -1, np.empty(x.shape, np.float32), None) is None
    other = F16 if dtype == BF16 else BF16
    assert k.fast_backward(0, x.astype(other), x, -1, None, None) is None


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", COMPILED)
def test_fast_path_extras(name, dtype):
    """z_loss, softcap and the return_* flags on 16-bit logits: the fast path takes them
    (tiles, long rows, rows split over threads, one sample) with the full path's named
    tuples and bits."""
    from csoftmax import _api

    fast = KERNEL_FRONTENDS[name]
    full = _api.Frontend(fast.kernels, f"full-{name}", fast=False)
    rng = make_rng(f"fast-extras{name}{dtype}")
    options = [dict(z_loss=1e-3, return_z_loss=True), dict(softcap=3.0),
               dict(z_loss=1e-4, softcap=2.0, return_token_accuracy=True, return_z_loss=True),
               dict(return_z_loss=True, label_smoothing=0.1)]
    for shape in [(1, 10), (33, 40), (300, 70), (2, 40_000), (1000,)]:
        x = _inputs(shape if len(shape) == 2 else (1,) + shape, dtype, rng, extreme=False)
        x = x.reshape(shape)
        labels = rng.integers(0, shape[-1], shape[:-1])
        if len(shape) == 2:
            labels[::3] = -100
        target = labels if len(shape) == 2 else int(labels)
        for i, kw in enumerate(options):
            reduction = ("mean", "sum", "none")[i % 3]
            assert fast.kernels.fast_cross_entropy(
                x, target, -1, -100, reduction, kw.get("label_smoothing", 0.0), None, True,
                None, None, kw.get("z_loss", 0.0), kw.get("softcap"),
                kw.get("return_z_loss", False), kw.get("return_token_accuracy", False)
            ) is not None
            for fn in ("cross_entropy", "cross_entropy_with_grad"):
                a = getattr(fast, fn)(x, target, reduction=reduction, **kw)
                b = getattr(full, fn)(x, target, reduction=reduction, **kw)
                assert type(a) is type(b)
                a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
                for u, v in zip(a, b):
                    assert (u is None) == (v is None)
                    if u is not None:
                        assert type(u) is type(v)
                        assert_bitwise_equal(u, v, f"{fn} {shape} {kw}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", COMPILED)
def test_fast_path_middle_axis(name, dtype):
    """softmax, log_softmax, logsumexp and the backward functions of 16-bit arrays over an
    axis that is not the last: the fast path takes them where the 16-bit strided kernels
    read them in place (positions after the axis, few enough classes), with the full path's
    bits (out=, in place, two threads, keepdims); other axes are declined."""
    from csoftmax import _api

    fast = KERNEL_FRONTENDS[name]
    full = _api.Frontend(fast.kernels, f"full-{name}", fast=False)
    k = fast.kernels
    rng = make_rng(f"fast-middle{name}{dtype}")
    for shape, axis in [((3, 5, 7), 1), ((3, 5, 7), 0), ((2, 10, 64), -2), ((2, 21, 32, 32), 1),
                        ((40, 3, 600), 0)]:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        what = f"{name} {np.dtype(dtype).name} {shape} axis {axis}"
        assert k.fast_rows(0, x, axis, None, None) is not None, what
        assert k.fast_logsumexp(x, axis, None) is not None, what
        for fn in ("softmax", "log_softmax", "logsumexp"):
            for kw in ({}, {"num_threads": 2}):
                a, b = getattr(fast, fn)(x, axis=axis, **kw), getattr(full, fn)(x, axis=axis, **kw)
                assert type(a) is type(b) and a.dtype == b.dtype, what
                assert_bitwise_equal(a, b, f"{fn} {what}")
        assert_bitwise_equal(fast.logsumexp(x, axis=axis, keepdims=True),
                             full.logsumexp(x, axis=axis, keepdims=True), f"keepdims {what}")
        out = np.empty_like(x)
        assert fast.log_softmax(x, axis=axis, out=out) is out
        assert_bitwise_equal(out, full.log_softmax(x, axis=axis), f"out= {what}")
        a = full.softmax(x, axis=axis)
        assert k.fast_backward(0, g, a, axis, None, None) is not None, what
        for fn in ("softmax_backward", "log_softmax_backward"):
            want = getattr(full, fn)(g, a, axis=axis)
            assert_bitwise_equal(getattr(fast, fn)(g, a, axis=axis), want, f"{fn} {what}")
            gi = g.copy()
            assert getattr(fast, fn)(gi, a, axis=axis, out=gi) is gi
            assert_bitwise_equal(gi, want, f"{fn} in place {what}")
    # declined: positions of size 1 after the axis, too many classes for the 16-bit
    # strided kernels (the full path's moved copies)
    for shape, axis in [((4, 50, 1), 1), ((2, 10000, 3), 1)]:
        x = rng.standard_normal(shape).astype(dtype)
        assert k.fast_rows(0, x, axis, None, None) is None
        assert k.fast_logsumexp(x, axis, None) is None
        assert_bitwise_equal(fast.softmax(x, axis=axis), full.softmax(x, axis=axis), "declined")


# ---------------------------------------------------------------------------
# csoftmax.torch on bfloat16 / float16 tensors: PyTorch's results, within its error

@pytest.mark.parametrize("tdtype", ["bfloat16", "float16"])
def test_torch_adapter_16bit(tdtype):
    torch = pytest.importorskip("torch")
    import csoftmax.torch as ct

    dt = getattr(torch, tdtype)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 500, generator=gen) * 3).to(dt)
    t = torch.randint(0, 500, (64,), generator=gen)
    t[::9] = -100
    # tolerance: a few units of the 16-bit format's rounding (PyTorch computes in float32
    # internally too, but rounds some intermediate steps to 16 bits)
    eps = 2.0**-7 if tdtype == "bfloat16" else 2.0**-10
    # PyTorch in the 16-bit dtype itself, and (label smoothing: its float16 smoothing
    # term overflows to inf) in float32 on the same values
    for kw, ref_dt in (({}, dt), ({"reduction": "sum"}, dt),
                       ({"label_smoothing": 0.1}, torch.float32)):
        a = x.clone().requires_grad_(True)
        b = x.to(ref_dt, copy=True).requires_grad_(True)
        la = ct.cross_entropy(a, t, **kw)
        lb = torch.nn.functional.cross_entropy(b, t, **kw)
        assert la.dtype == dt and la.shape == lb.shape
        la.backward()
        lb.backward()
        assert a.grad.dtype == dt
        torch.testing.assert_close(la.float(), lb.float(), rtol=4 * eps, atol=0)
        torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=4 * eps,
                                   atol=4 * eps * float(b.grad.float().abs().max()))
    for fn, ref in ((ct.softmax, torch.softmax), (ct.log_softmax, torch.log_softmax)):
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        ya, yb = fn(a, -1), ref(b, -1)
        assert ya.dtype == dt
        torch.testing.assert_close(ya.float(), yb.float(), rtol=2 * eps, atol=1e-6)
        w = torch.randn(ya.shape, generator=gen).to(dt)
        (ya.float() * w.float()).sum().backward()
        (yb.float() * w.float()).sum().backward()
        torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=8 * eps,
                                   atol=8 * eps * float(b.grad.float().abs().max()))
    # viewed, not copied: the NumPy array shares the tensor's memory
    from csoftmax.torch import _as_numpy

    arr = _as_numpy(x, "x")
    assert arr.__array_interface__["data"][0] == x.data_ptr()
    assert arr.dtype.name == tdtype


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_16bit_is_float32_rounded_once(dtype, reduction):
    """linear_cross_entropy on 16-bit input: the float32 computation on the same
    values, the gradients rounded once by the kernels' conversion (no NumPy cast)
    and the loss, z-loss and accuracy rounded once from double."""
    import csoftmax

    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    rng = make_rng(7)
    x = rng.standard_normal((40, 16)).astype(dt)
    w = (rng.standard_normal((300, 16)) * 0.5).astype(dt)
    b = rng.standard_normal(300).astype(dt)
    t = rng.integers(0, 300, 40)
    t[3] = -100
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    opts = dict(reduction=reduction, z_loss=1e-3, return_z_loss=True,
                return_token_accuracy=True, chunk_size=16)
    loss, gx, gw, gb, z, acc = csoftmax.linear_cross_entropy_with_grad(
        x, w, t, linear_bias=b, **opts)
    l32, gx32, gw32, gb32, z32, a32 = csoftmax.linear_cross_entropy_with_grad(
        x32, w32, t, linear_bias=b32, **opts)
    for got, want in ((gx, gx32), (gw, gw32), (gb, gb32)):
        assert got.dtype == dt
        assert_bitwise_equal(got, _half.store(want, dt))
    for got, want in ((loss, l32), (z, z32), (acc, a32)):
        assert np.asarray(got).dtype == dt
        ref = _half.round_once(np.asarray(want, np.float64), dt)
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(ref, np.float64),
                                   rtol=2 ** -7)
    only = csoftmax.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction)
    assert np.asarray(only).dtype == dt


def _masks(rng, shape):
    """where= masks of a (rows, C) shape: random, a padding prefix per row, a broadcast
    (1, C) row, a broadcast (rows, 1) column (some rows keep nothing), all-False rows."""
    n, c = shape
    lengths = rng.integers(0, c + 1, size=n)
    empty_rows = np.ones(shape, bool)
    empty_rows[::3] = False
    return {
        "random": rng.random(shape) < 0.7,
        "prefix": np.arange(c) < lengths[:, None],
        "(1, C)": (np.arange(c) < c - c // 4)[None, :],
        "(N, 1)": (rng.random((n, 1)) < 0.7),
        "empty rows": empty_rows,
    }


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(9, 40), (33, 17), (6, 1000), (3, 4099)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_masked_16bit_round_float32_once(frontend, dtype, shape, threads):
    """where= on 16-bit arrays (a row at a time in float32, no float32 copy of the arrays):
    every masked function gives the float32 result on the converted values rounded once,
    bit for bit, over the last axis and another one."""
    fe = frontend
    rng = make_rng(f"masked16{fe.name}{dtype}{shape}")
    x = _inputs(shape, dtype, rng, extreme=True)
    g = rng.standard_normal(shape).astype(dtype)
    x32, g32 = x.astype(np.float32), g.astype(np.float32)
    for what, keep in _masks(rng, shape).items():
        kw = dict(where=keep, num_threads=threads)
        for fn in (fe.softmax, fe.log_softmax):
            got = fn(x, **kw)
            assert got.dtype == dtype
            assert_bitwise_equal(got, _round(fn(x32, **kw), dtype).view(dtype),
                                 f"{fn.__name__} {what}")
            keep_t = np.broadcast_to(keep, shape).T
            assert_bitwise_equal(fn(x.T, axis=0, where=keep_t, num_threads=threads),
                                 _round(fn(x32, **kw), dtype).view(dtype).T,
                                 f"{fn.__name__} {what} axis 0")
        got = fe.logsumexp(x, axis=-1, **kw)
        assert got.dtype == dtype
        assert_bitwise_equal(got, _round(fe.logsumexp(x32, axis=-1, **kw), dtype).view(dtype),
                             f"logsumexp {what}")
        for fn, fwd in ((fe.softmax_backward, fe.softmax),
                        (fe.log_softmax_backward, fe.log_softmax)):
            a = fwd(x, where=keep)
            want = _round(fn(g32, a.astype(np.float32), **kw), dtype).view(dtype)
            got = fn(g, a, **kw)
            assert got.dtype == dtype
            assert_bitwise_equal(got, want, f"{fn.__name__} {what}")
            inplace = g.copy()
            assert fn(inplace, a, out=inplace, **kw) is inplace
            assert_bitwise_equal(inplace, want, f"{fn.__name__} {what} in place")


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp", "softmax_backward"])
def test_masked_16bit_no_float32_copy(kernel_frontend, name):
    """The compiled 16-bit where= path allocates no float32 copy of its inputs: its peak
    traced memory stays below the 16-bit output's size plus a little (a float32 copy of
    one input alone is twice that)."""
    fe = kernel_frontend
    if fe.name == "numpy":
        pytest.skip("the NumPy twin computes on float32 copies")
    x = make_rng("masked16mem").standard_normal((512, 1024)).astype(BF16)
    keep = np.arange(1024) < 900
    if name == "softmax_backward":
        a = fe.softmax(x, where=keep)
        call = lambda: fe.softmax_backward(x, a, where=keep)  # noqa: E731
    else:
        call = lambda: getattr(fe, name)(x, where=keep)  # noqa: E731
    call()
    peak = peak_traced_bytes(call)
    assert peak < x.nbytes + (64 << 10), f"{name}: peak {peak} bytes for {x.nbytes}-byte input"
