"""``where=`` over one axis that is not the last, read in place by the kernels over the middle
axis of (outer, C, inner) arrays (src/maskedstrided.hpp): the long-double reference, the
unmasked call's bits under an all-True mask, empty and special slices, blocks and their tails,
thread counts, out= and in place, the masks that take the rows path instead (axes that do
not collapse into one stride, more classes than the scratch takes), and no moved copy."""

from __future__ import annotations

import numpy as np
import pytest
from arrays import (
    FLOAT_DTYPES,
    FLOAT_IDS,
    assert_bitwise_equal,
    assert_close,
    call_unmodified,
    make_rng,
    peak_traced_bytes,
    row_scale,
)
from test_masked import BACKWARD, FORWARD, ref_backward, ref_forward

# (x shape, mask shape, axis): single non-last axes, masks full or broadcast (stride 0) over
# the outer, class or inner axes; blocks of 64 .. 1024 positions and a partial last one
CASES = [
    ((3, 7, 5), (3, 7, 5), 1),
    ((4, 9, 70), (1, 9, 70), 1),
    ((64, 100, 64), (1, 100, 1), 1),
    ((100, 300), (100, 1), 0),
    ((300, 1030), (300, 1030), 0),          # inner > width: rows apart (prefetched)
    ((2, 21, 4, 33), (2, 1, 4, 33), 1),     # the class axis broadcast
    ((2, 5, 3, 4), (2, 5, 3, 4), 2),
    ((2, 3000, 70), (2, 3000, 1), 1),
]
CASE_IDS = [f"{s}-{m}-ax{a}" for s, m, a in CASES]


def _inputs(shape, mshape, dtype, key):
    rng = make_rng("masked-strided", *key)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    where = rng.random(mshape) < 0.7
    return x, where, rng


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(("shape", "mshape", "axis"), CASES, ids=CASE_IDS)
def test_matches_reference(kernel_frontend, dtype, shape, mshape, axis):
    x, where, rng = _inputs(shape, mshape, dtype, (kernel_frontend.name, dtype, shape, axis))
    x.flat[::7] = np.nan                      # mostly under the mask's False entries too
    g = rng.standard_normal(shape).astype(dtype)
    for name in FORWARD:
        r = call_unmodified(getattr(kernel_frontend, name), x, axis, where=where)
        want = ref_forward(name, x, where, axis)
        assert r.dtype == dtype
        assert_close(r, want, dtype, row_scale([want]), what=name)
    for fwd, name in zip(("softmax", "log_softmax"), BACKWARD):
        clean = np.nan_to_num(x)
        out = getattr(kernel_frontend, fwd)(clean, axis, where=where)
        r = call_unmodified(getattr(kernel_frontend, name), g, out, axis, where=where)
        want = ref_backward(name, g, out, where, axis)
        assert_close(r, want, dtype, row_scale([want, g]) * shape[axis], what=name)
        assert np.all(r[~np.broadcast_to(where, shape)] == 0), "gradient at masked entries"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_empty_and_special_slices(kernel_frontend, dtype):
    """Slices (along axis 1) with no kept entry give 0 / -inf / -inf; a masked NaN or +inf
    is ignored; a kept NaN, a kept +inf or kept entries all -inf make the kept outputs NaN
    and leave the masked ones 0 / -inf."""
    x, _, _ = _inputs((2, 6, 80), (1,), dtype, (kernel_frontend.name, dtype, "special"))
    where = np.ones(x.shape, bool)
    where[0, :, 0] = False                                   # nothing kept
    where[0, 2, 1], x[0, 2, 1] = False, np.nan               # masked NaN
    where[0, 3, 2], x[0, 3, 2] = False, np.inf               # masked +inf
    x[0, 4, 3] = np.nan                                      # kept NaN
    x[0, 5, 4] = np.inf                                      # kept +inf
    where[1, :3, 5], x[1, 3:, 5] = False, -np.inf            # kept entries all -inf
    sm = kernel_frontend.softmax(x, 1, where=where)
    lsm = kernel_frontend.log_softmax(x, 1, where=where)
    lse = kernel_frontend.logsumexp(x, 1, where=where)
    assert np.all(sm[0, :, 0] == 0) and np.all(lsm[0, :, 0] == -np.inf)
    assert lse[0, 0] == -np.inf
    for j in (1, 2):
        assert np.isfinite(sm[0, :, j]).all() and np.isfinite(lse[0, j])
    for o, j in ((0, 3), (0, 4), (1, 5)):
        kept = where[o, :, j]
        assert np.isnan(sm[o, kept, j]).all() and np.isnan(lsm[o, kept, j]).all()
        assert np.all(sm[o, ~kept, j] == 0) and np.all(lsm[o, ~kept, j] == -np.inf)
    for name, r in (("softmax", sm), ("log_softmax", lsm), ("logsumexp", lse)):
        want = ref_forward(name, x, where, 1)
        assert_close(r, want, dtype, row_scale([want]), what=name)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_all_true_is_the_unmasked_call(kernel_frontend, dtype):
    """An all-True mask over a middle axis gives the unmasked call's bits over that axis (the
    same strided kernels on the same values)."""
    if kernel_frontend.name == "numpy":
        pytest.skip("the NumPy twin's masked rows sum in another order")
    x, _, rng = _inputs((3, 40, 150), (1,), dtype, (kernel_frontend.name, dtype, "all"))
    g = rng.standard_normal(x.shape).astype(dtype)
    for where in (np.ones(x.shape, bool), np.ones((40, 1), bool)):
        for name in FORWARD:
            fn = getattr(kernel_frontend, name)
            assert_bitwise_equal(fn(x, 1, where=where), fn(x, 1), what=name)
        for fwd, name in zip(("softmax", "log_softmax"), BACKWARD):
            out = getattr(kernel_frontend, fwd)(x, 1)
            fn = getattr(kernel_frontend, name)
            assert_bitwise_equal(fn(g, out, 1, where=where), fn(g, out, 1), what=name)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_threads_out_in_place(kernel_frontend, dtype):
    x, where, rng = _inputs((4, 300, 130), (4, 300, 130), dtype,
                            (kernel_frontend.name, dtype, "threads"))
    g = rng.standard_normal(x.shape).astype(dtype)
    for name in ("softmax", "log_softmax"):
        fn = getattr(kernel_frontend, name)
        want = fn(x, 1, where=where, num_threads=1)
        for n in (2, 3):
            assert_bitwise_equal(fn(x, 1, where=where, num_threads=n), want, f"{n} threads")
        out = np.empty_like(x)
        assert fn(x, 1, where=where, out=out) is out
        assert_bitwise_equal(out, want, f"{name} out=")
        y = x.copy()
        assert fn(y, 1, where=where, out=y) is y
        assert_bitwise_equal(y, want, f"{name} in place")
        back = kernel_frontend.softmax_backward
        want = back(g, want, 1, where=where, num_threads=1)
        assert_bitwise_equal(back(g, fn(x, 1, where=where), 1, where=where, num_threads=3),
                             want, "backward, 3 threads")
    lse = kernel_frontend.logsumexp
    assert_bitwise_equal(lse(x, 1, where=where, num_threads=3),
                         lse(x, 1, where=where, num_threads=1), "logsumexp threads")
    with pytest.raises(ValueError, match="overlap where"):
        buf = np.zeros(x.size, dtype)
        kernel_frontend.softmax(x, 1, where=buf.view(bool)[:x.size].reshape(x.shape),
                                out=buf.reshape(x.shape))


@pytest.mark.parametrize(("shape", "mshape"), [((2, 3, 6, 8), (1, 1, 1, 8)),
                                              ((1, 9000, 3), (1, 9000, 3))], ids=str)
def test_rows_path_cases(kernel_frontend, shape, mshape):
    """A mask whose inner axes do not collapse into one stride, and more classes than the
    kernels' scratch takes, run the rows path: the same values."""
    x, where, _ = _inputs(shape, mshape, np.float64, (kernel_frontend.name, shape))
    for name in FORWARD:
        want = ref_forward(name, x, where, 1)
        assert_close(getattr(kernel_frontend, name)(x, 1, where=where), want, np.float64,
                     row_scale([want]), what=name)


def test_no_moved_copy(kernel_frontend):
    """Over axis 1 the only array of the input's size that is allocated is the result (the
    rows path moved x, and the result back)."""
    if kernel_frontend.name == "numpy":
        pytest.skip("the NumPy twin moves the axis (copies)")
    x, where, _ = _inputs((16, 200, 256), (16, 1, 256), np.float32, ("memory",))
    _assert_result_only(kernel_frontend, x, where)


def _assert_result_only(fe, x, where):
    """softmax over axis 1 allocates nothing of x's size but its result."""
    fe.softmax(x, 1, where=where)
    peak = peak_traced_bytes(lambda: fe.softmax(x, 1, where=where, num_threads=2))
    assert peak < 1.25 * x.nbytes, f"peak {peak} bytes for a result of {x.nbytes}"


# ---- float16 and bfloat16 -----------------------------------------------------------------

ml_dtypes = pytest.importorskip("ml_dtypes")
HALF = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _round(r32, dtype):
    from csoftmax import _half

    out = np.empty(r32.shape, np.uint16)
    _half.store_numpy(r32, out, _half.F16 if dtype == np.float16 else _half.BF16)
    return out.view(dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("shape", "mshape", "axis"), [((3, 7, 5), (3, 7, 5), 1),
                                                       ((300, 130), (300, 1), 0),
                                                       ((2, 21, 4, 33), (2, 1, 4, 33), 1)],
                         ids=str)
@pytest.mark.parametrize("dtype", list(HALF), ids=list(HALF))
def test_16bit(kernel_frontend, dtype, shape, mshape, axis, threads):
    """16-bit inputs over a middle axis are read in place too, computed in float32: the
    float32 masked call over the same axis on the converted inputs, rounded once, bit for
    bit (logsumexp: in the logits' dtype as it returns it); out= and in place."""
    fe = kernel_frontend
    dt = HALF[dtype]
    x, where, rng = _inputs(shape, mshape, np.float32, (fe.name, dtype, shape, threads))
    x = x.astype(dt)
    x32 = x.astype(np.float32)
    g = rng.standard_normal(shape).astype(dt)
    kw = dict(where=where, num_threads=threads)
    for name in ("softmax", "log_softmax"):
        fn = getattr(fe, name)
        want = _round(fn(x32, axis, **kw), dt)
        assert_bitwise_equal(fn(x, axis, **kw), want, name)
        y = x.copy()
        assert fn(y, axis, out=y, **kw) is y
        assert_bitwise_equal(y, want, f"{name} in place")
        back = getattr(fe, f"{name}_backward")
        want_g = _round(back(g.astype(np.float32), want.astype(np.float32), axis, **kw), dt)
        assert_bitwise_equal(back(g, want, axis, **kw), want_g, f"{name}_backward")
    assert_bitwise_equal(fe.logsumexp(x, axis, **kw),
                         fe.logsumexp(x32, axis, **kw).astype(dt), "logsumexp")


def test_16bit_no_moved_copy(kernel_frontend):
    if kernel_frontend.name == "numpy":
        pytest.skip("the NumPy twin computes on float32 copies")
    x, where, _ = _inputs((16, 200, 256), (16, 1, 256), np.float32, ("memory16",))
    _assert_result_only(kernel_frontend, x.astype(HALF["bfloat16"]), where)
