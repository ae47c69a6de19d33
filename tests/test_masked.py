"""``where=``: masked softmax, log_softmax, logsumexp and their backward passes.

Every compiled instruction-set variant and the NumPy twin (``kernel_frontend``), both dtypes,
against a float64 masked reference, PyTorch's ``torch._safe_softmax`` and ``torch.masked``, and
the unmasked functions (an all-True mask gives the same bits); masks broadcast over any axes
(read in place, never expanded), every axis, ``out=``, threads, gradients, errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from arrays import (
    FLOAT_DTYPES,
    FLOAT_IDS,
    assert_bitwise_equal,
    assert_close,
    call_unmodified,
    row_scale,
    special,
)

import csoftmax

NINF = -np.inf
FORWARD = ("softmax", "log_softmax", "logsumexp")
BACKWARD = ("softmax_backward", "log_softmax_backward")

# (x shape, mask shape, axis): broadcast masks over leading, trailing and middle axes
CASES = [
    ((6, 40), (6, 40), -1),
    ((6, 40), (1, 40), -1),
    ((6, 40), (40,), -1),
    ((6, 40), (6, 1), -1),          # constant along the row: whole rows kept or dropped
    ((5, 7), (5, 7), -1),           # short rows (the unmasked tiles' arithmetic)
    ((5, 7), (5, 7), 0),
    ((9, 300), (9, 300), -1),       # lanes and a tail
    ((4, 5, 33), (4, 1, 33), -1),
    ((4, 5, 33), (5, 1), 1),
    ((4, 5, 33), (4, 5, 33), 0),
    ((2, 3, 6, 6), (2, 1, 1, 6), -1),  # attention scores and a key padding mask
    ((2, 3, 6, 6), (2, 1, 6, 1), 2),
    ((3, 4, 5), (4, 5), (1, 2)),
    ((3, 4, 5), (3, 1, 5), (0, 2)),
    ((3, 4, 5), (3, 4, 5), None),
    ((3, 4, 5), (), None),
]
CASE_IDS = [f"{s}-{m}-ax{a}" for s, m, a in CASES]


# ---------------------------------------------------------------------------------------------
# float64 (long double) reference


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    return tuple(a % ndim for a in (axis if isinstance(axis, tuple) else (axis,)))


def ref_forward(name, x, where, axis):
    x = np.asarray(x, np.longdouble)
    k = np.broadcast_to(where, x.shape)
    ax = _axes(axis, x.ndim)
    with np.errstate(all="ignore"):
        xm = np.where(k, x, NINF)
        m = np.max(xm, axis=ax, keepdims=True)
        e = np.where(k, np.exp(xm - m), 0.0)
        s = e.sum(axis=ax, keepdims=True)
        if name == "softmax":
            return np.where(k, e / s, 0.0)
        if name == "log_softmax":
            return np.where(k, (xm - m) - np.log(s), NINF)
        r = m + np.log(s)
        special_ = np.isinf(m)
        nan = np.isnan(xm).any(axis=ax, keepdims=True)
        r = np.where(special_, np.where(nan, np.nan, m), r)
        return np.squeeze(r, axis=ax)


def ref_backward(name, g, out, where, axis):
    g, out = np.asarray(g, np.longdouble), np.asarray(out, np.longdouble)
    k = np.broadcast_to(where, out.shape)
    ax = _axes(axis, out.ndim)
    with np.errstate(all="ignore"):
        if name == "softmax_backward":
            dot = np.where(k, g * out, 0.0).sum(axis=ax, keepdims=True)
            return np.where(k, out * (g - dot), 0.0)
        gs = np.where(k, g, 0.0).sum(axis=ax, keepdims=True)
        return np.where(k, g - np.exp(out) * gs, 0.0)


def _mask(rng, shape, p=0.7):
    return rng.random(shape) < p


# ---------------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(("shape", "mshape", "axis"), CASES, ids=CASE_IDS)
def test_forward_matches_reference(kernel_frontend, dtype, shape, mshape, axis, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    where = _mask(rng, mshape)
    for name in FORWARD:
        r = call_unmodified(getattr(kernel_frontend, name), x, axis, where=where)
        expected = ref_forward(name, x, where, axis)
        assert r.dtype == dtype
        assert_close(r, expected, dtype, row_scale([expected]), what=name)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(("shape", "mshape", "axis"), CASES, ids=CASE_IDS)
def test_backward_matches_reference(kernel_frontend, dtype, shape, mshape, axis, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    where = _mask(rng, mshape)
    for fwd, name in zip(("softmax", "log_softmax"), BACKWARD):
        out = getattr(kernel_frontend, fwd)(x, axis, where=where)
        r = call_unmodified(getattr(kernel_frontend, name), g, out, axis, where=where)
        expected = ref_backward(name, g, out, where, axis)
        assert r.dtype == dtype
        assert_close(r, expected, dtype, row_scale([expected, g]), what=name)
        assert np.all(r[~np.broadcast_to(where, shape)] == 0), "gradient at masked entries"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("n", [3, 17, 40, 300])
def test_special_values(kernel_frontend, dtype, n, rng):
    """NaN, +inf and -inf among kept and masked entries: masked ones are ignored, kept ones
    follow the unmasked rules (a row keeping only -inf is NaN, as without a mask)."""
    x = special((16, n), rng).astype(dtype)
    where = _mask(rng, (16, n), 0.6)
    where[3] = False
    where[5, :] = True
    for name in FORWARD:
        r = getattr(kernel_frontend, name)(x, where=where)
        assert_close(r, ref_forward(name, x, where, -1), dtype,
                     row_scale([ref_forward(name, x, where, -1)]), what=name)


def _bitwise_from(kernel_frontend, dtype):
    """The row width from which a masked call gives the unmasked call's bits: the first
    width past the compiled kernels' short-row tiles, rows of fewer than
    SHORT_ROW_LIMIT_BYTES bytes of the computing dtype (the NumPy twin: 32 columns)."""
    limit = getattr(kernel_frontend.kernels, "SHORT_ROW_LIMIT_BYTES", None)
    if limit is None:
        return 32
    return limit // (8 if np.dtype(dtype) == np.float64 else 4)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", [(5, 1), (5, 7), (5, 31), (5, 32), (5, 63), (5, 64),
                                   (7, 100), (3, 1000), (2, 20000), (4, 3, 40)])
def test_all_true_is_the_unmasked_call(kernel_frontend, dtype, shape, rng):
    """An all-True mask, full or broadcast, gives the unmasked call's bits (forward) on rows
    of the compiled kernels' long rows (the same row reductions), within rounding on short
    rows (the unmasked ones run in transposed tiles) and in the backward passes."""
    x = special(shape, rng).astype(dtype) if shape[-1] >= 3 else rng.standard_normal(shape)
    x = x.astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    for where in (np.ones(shape, bool), np.ones(shape[-1:], bool), np.True_):
        for name in FORWARD:
            fn = getattr(kernel_frontend, name)
            if shape[-1] >= _bitwise_from(kernel_frontend, dtype):
                assert_bitwise_equal(fn(x, where=where), fn(x), what=name)
            else:
                want = fn(x)
                assert_close(fn(x, where=where), want, dtype, row_scale([want]), what=name)
        for fwd, name in zip(("softmax", "log_softmax"), BACKWARD):
            out = getattr(kernel_frontend, fwd)(x)
            fn = getattr(kernel_frontend, name)
            expected = fn(g, out)
            assert_close(fn(g, out, where=where), expected, dtype, row_scale([expected, g]),
                         what=name)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("n, kept", [(40, 33), (40, 1), (40, 31), (100, 63), (100, 64),
                                     (1000, 900), (7, 3)])
def test_padding_mask_is_the_unmasked_call_on_the_kept_prefix(kernel_frontend, dtype, n, kept,
                                                              rng):
    """A mask keeping the first `kept` entries of each row (a padding mask; broadcast or full,
    mixed with rows of other masks): the kept outputs are the unmasked call's on x[..., :kept]
    (within rounding: the compiled kernels compute them as that call, bitwise for prefixes of
    long rows), the masked ones 0 / -inf whatever x holds there (NaN, +inf)."""
    x = rng.standard_normal((6, n)).astype(dtype) * 3
    x[:, kept:] = np.nan
    x[::2, -1] = np.inf
    g = rng.standard_normal((6, n)).astype(dtype)
    prefix = np.arange(n) < kept
    mixed = np.tile(prefix, (6, 1))
    mixed[1] = rng.random(n) < 0.5   # not a prefix: the masked code on that row
    mixed[1, kept:] = False
    pre = slice(None), slice(0, kept)
    compiled = "_kernels" in kernel_frontend.kernels.__name__
    fill = {"softmax": 0.0, "log_softmax": NINF}
    for where in (prefix, mixed):
        rows = [0, 2, 3, 4, 5] if where is mixed else slice(None)
        for name in FORWARD:
            fn = getattr(kernel_frontend, name)
            got, want = fn(x, where=where)[rows], fn(np.ascontiguousarray(x[pre]))[rows]
            if name == "logsumexp":
                assert_close(got, want, dtype, row_scale([want]), what=name)
                continue
            assert np.all(got[:, kept:] == fill[name]), name
            assert_close(got[:, :kept], want, dtype, row_scale([want]), what=name)
            if kept >= _bitwise_from(kernel_frontend, dtype) and compiled:
                assert_bitwise_equal(got[:, :kept], want, what=name)
        for fwd, name in zip(("softmax", "log_softmax"), BACKWARD):
            out = getattr(kernel_frontend, fwd)(x, where=where)
            fn = getattr(kernel_frontend, name)
            got = fn(g, out, where=where)[rows]
            want = fn(np.ascontiguousarray(g[pre]), np.ascontiguousarray(out[pre]))[rows]
            assert np.all(got[:, kept:] == 0), name
            assert_close(got[:, :kept], want, dtype, row_scale([want, g[rows]]), what=name)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("shape", [(4, 6), (3, 50), (2, 3, 40)])
def test_all_false_and_empty(kernel_frontend, dtype, shape, rng):
    x = special(shape, rng).astype(dtype)  # NaN and inf at masked entries are ignored
    g = rng.standard_normal(shape).astype(dtype)
    for where in (np.zeros(shape, bool), np.zeros(shape[-1:], bool), np.False_):
        assert np.all(kernel_frontend.softmax(x, where=where) == 0)
        assert np.all(kernel_frontend.log_softmax(x, where=where) == NINF)
        lse = kernel_frontend.logsumexp(x, where=where)
        assert lse.shape == shape[:-1] and np.all(lse == NINF)
        assert np.all(kernel_frontend.softmax_backward(g, x, where=where) == 0)
        assert np.all(kernel_frontend.log_softmax_backward(g, x, where=where) == 0)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_empty_input(kernel_frontend, shape):
    x = np.zeros(shape, np.float32)
    where = np.ones(shape, bool)
    assert kernel_frontend.softmax(x, where=where).shape == shape
    assert kernel_frontend.log_softmax(x, where=where).shape == shape
    lse = kernel_frontend.logsumexp(x, where=where)
    assert lse.shape == shape[:1] and np.all(lse == NINF)
    assert kernel_frontend.softmax_backward(x, x, where=where).shape == shape


@pytest.mark.parametrize("make", ["F", "strided", "negstride", "transposed", "list", "scalar"])
def test_mask_layouts(kernel_frontend, make, rng):
    """Masks of any memory layout (read in place, or gathered row by row)."""
    x = rng.standard_normal((7, 45)).astype(np.float32)
    w = _mask(rng, (7, 45))
    if make == "F":
        where = np.asfortranarray(w)
    elif make == "strided":
        big = np.zeros((14, 90), bool)
        big[::2, ::2] = w
        where = big[::2, ::2]
    elif make == "negstride":
        where = np.ascontiguousarray(w[::-1, ::-1])[::-1, ::-1]
    elif make == "transposed":
        where = np.ascontiguousarray(w.T).T
    elif make == "list":
        where = w.tolist()
    else:
        w = np.ones((7, 45), bool)
        where = True
    for name in FORWARD:
        fn = getattr(kernel_frontend, name)
        assert_bitwise_equal(fn(x, where=where), fn(x, where=np.ascontiguousarray(w)), what=name)


def test_mask_is_not_expanded(monkeypatch):
    """The compiled kernels get a broadcast (B, 1, 1, S) mask as a view with zero strides
    and O(rows) offsets: nothing of x's size is made of it."""
    from csoftmax import _validation

    seen = []
    original = _validation.MaskRows.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(_validation.MaskRows, "__init__", spy)
    x = np.zeros((2, 3, 8, 8), np.float32)
    where = np.ones((2, 1, 1, 8), bool)
    csoftmax.softmax(x, where=where)
    (mask,) = seen
    assert np.shares_memory(mask.view, where)
    assert mask.col_stride == 1 and mask.col_offsets is None
    assert mask.row_offsets is not None and mask.row_offsets.size == 2 * 3 * 8


# ---------------------------------------------------------------------------------------------
# PyTorch


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_safe_softmax(kernel_frontend, dtype, dim, rng):
    """softmax(x, where=x != -inf) is torch._safe_softmax(x, dim), all -inf slices (0) too."""
    torch = _torch()
    x = special((6, 5, 9), rng).astype(dtype)
    x = np.where(np.isnan(x) | (x == np.inf), 0.0, x).astype(dtype)  # -inf and finite only
    x[2] = NINF
    r = kernel_frontend.softmax(x, dim, where=x != NINF)
    expected = torch._safe_softmax(torch.from_numpy(x.astype(np.float64)), dim).numpy()
    assert_close(r, expected, dtype, what="softmax vs torch._safe_softmax")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_attention_padding(kernel_frontend, dtype, rng):
    """(B, H, S, S) scores with a (B, 1, 1, S) key padding mask; one batch entry fully
    padded: _safe_softmax of the masked_fill scores, and torch.masked.softmax where it is
    defined (it gives NaN for the fully padded entry)."""
    torch = _torch()
    b, h, s = 3, 2, 10
    x = rng.standard_normal((b, h, s, s)).astype(dtype)
    lengths = np.array([10, 4, 0])
    where = (np.arange(s) < lengths[:, None])[:, None, None, :]
    r = kernel_frontend.softmax(x, where=where)
    xt = torch.from_numpy(x.astype(np.float64))
    mt = torch.from_numpy(np.ascontiguousarray(where))
    safe = torch._safe_softmax(xt.masked_fill(~mt, NINF), -1).numpy()
    assert_close(r, safe, dtype, what="vs _safe_softmax")
    assert np.all(r[2] == 0)
    masked = torch.masked.softmax(xt, -1, mask=mt.expand(b, h, s, s)).numpy()
    assert_close(r[:2], masked[:2], dtype, what="vs torch.masked.softmax")
    lr = kernel_frontend.log_softmax(x, where=where)
    lt = torch.masked.log_softmax(xt, -1, mask=mt.expand(b, h, s, s)).numpy()
    keep = np.broadcast_to(where, x.shape)
    assert_close(lr[keep], lt[keep], dtype, what="vs torch.masked.log_softmax")
    assert np.all(lr[~keep] == NINF)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, -1])
def test_torch_gradients(name, dim, rng):
    """csoftmax.torch with mask=, values and gradients vs torch autograd of the masked
    formula in float64 (non-uniform upstream gradient)."""
    torch = _torch()
    import csoftmax.torch as ct

    shape = (5, 12)
    x = rng.standard_normal(shape)
    m = _mask(rng, (1, 12) if dim == -1 else (5, 1))
    m.flat[0] = False
    m.flat[-1] = True
    mt = torch.from_numpy(m)
    up = torch.from_numpy(rng.standard_normal(shape))
    a = torch.from_numpy(x).requires_grad_()
    b = torch.from_numpy(x).requires_grad_()
    ra = getattr(ct, name)(a, dim, mask=mt)
    filled = b.masked_fill(~mt, NINF)
    rb = torch._safe_softmax(filled, dim) if name == "softmax" else filled.log_softmax(dim)
    keep = mt.expand(shape)
    torch.testing.assert_close(ra[keep], rb[keep])
    assert torch.all(ra[~keep] == (0.0 if name == "softmax" else NINF))
    (torch.where(keep, ra, 0.0) * up).sum().backward()
    (torch.where(keep, rb, 0.0) * up).sum().backward()
    torch.testing.assert_close(a.grad, torch.nan_to_num(b.grad))
    assert torch.all(a.grad[~keep] == 0)


def test_torch_mask_errors():
    torch = _torch()
    import csoftmax.torch as ct

    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="mask has dtype torch.int64: expected a bool tensor"):
        ct.softmax(x, 1, mask=torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"where of shape \(2,\) does not broadcast to x of "
                                         r"shape \(2, 3\)"):
        ct.log_softmax(x, 1, mask=torch.ones(2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# out=, threads, logsumexp options


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_out_and_in_place(kernel_frontend, dtype, rng):
    x = rng.standard_normal((6, 50)).astype(dtype)
    g = rng.standard_normal((6, 50)).astype(dtype)
    where = _mask(rng, (1, 50))
    for name in ("softmax", "log_softmax"):
        fn = getattr(kernel_frontend, name)
        expected = fn(x, where=where)
        out = np.empty_like(x)
        assert fn(x, where=where, out=out) is out
        assert_bitwise_equal(out, expected)
        y = x.copy()
        assert fn(y, where=where, out=y) is y
        assert_bitwise_equal(y, expected)
        # a non-trailing axis (the kernels over the middle axis, which sum in class
        # order): the same values within rounding
        out_t = np.empty(x.T.shape, dtype)
        assert fn(x.T, 0, where=where.T, out=out_t) is out_t
        assert_close(out_t, expected.T, dtype, row_scale([expected.T]), what=name)
    a = kernel_frontend.softmax(x, where=where)
    expected = kernel_frontend.softmax_backward(g, a, where=where)
    gg = g.copy()
    assert kernel_frontend.softmax_backward(gg, a, where=where, out=gg) is gg
    assert_bitwise_equal(gg, expected)


@pytest.mark.parametrize("kind", ["broadcast", "full", "gathered", "offsets", "few long rows"])
def test_threads_bitwise(kernel_frontend, kind, rng):
    shape = (3, 40000) if kind == "few long rows" else (4, 16, 300)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    where = {
        "broadcast": _mask(rng, shape[-1:]),
        "full": _mask(rng, shape),
        "gathered": np.asfortranarray(_mask(rng, shape)),
        "offsets": _mask(rng, (4, 1, 300)),
        "few long rows": _mask(rng, shape),
    }[kind]
    for name in FORWARD:
        fn = getattr(kernel_frontend, name)
        results = [fn(x, where=where, num_threads=t) for t in (1, 2, 3)]
        for r in results[1:]:
            assert_bitwise_equal(r, results[0], what=f"{name} threads")
    for name in BACKWARD:
        fn = getattr(kernel_frontend, name)
        results = [fn(g, x, where=where, num_threads=t) for t in (1, 2, 3)]
        for r in results[1:]:
            assert_bitwise_equal(r, results[0], what=f"{name} threads")


def test_logsumexp_options(kernel_frontend, rng):
    x = rng.standard_normal((4, 5, 6))
    where = _mask(rng, (5, 6))
    where[1] = False
    full = ref_forward("logsumexp", x, where, (1, 2))
    r = kernel_frontend.logsumexp(x, (1, 2), keepdims=True, where=where)
    assert r.shape == (4, 1, 1)
    assert_close(r[:, 0, 0], full, np.float64)
    r, sign = kernel_frontend.logsumexp(x[0], where=where, return_sign=True)
    assert_bitwise_equal(sign, np.where(where.any(axis=-1), 1.0, 0.0))
    assert float(kernel_frontend.logsumexp(x[0, 0], where=where[0])) == pytest.approx(
        float(ref_forward("logsumexp", x[0, 0], where[0], -1)))
    # with b: the mask drops terms as zero factors do
    b = rng.random((4, 5, 6)) + 0.5
    r = kernel_frontend.logsumexp(x, -1, b=b, where=where)
    expected = kernel_frontend.logsumexp(x, -1, b=np.where(where, b, 0.0))
    assert_close(r, expected, np.float64)


def test_float16_and_ints(frontend, rng):
    x = rng.standard_normal((3, 40))
    where = _mask(rng, (3, 40))
    r16 = frontend.softmax(x.astype(np.float16), where=where)
    assert r16.dtype == np.float16
    assert_close(r16, ref_forward("softmax", x.astype(np.float16), where, -1), np.float16)
    ri = frontend.softmax(np.arange(6).reshape(2, 3), where=np.array([True, False, True]))
    assert ri.dtype == np.float64 and np.all(ri[:, 1] == 0)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("name", FORWARD + BACKWARD)
def test_where_errors(frontend, name):
    fn = getattr(frontend, name)
    x = np.zeros((2, 4))
    args = (x, x) if name in BACKWARD else (x,)
    what = "output" if name in BACKWARD else "x"
    with pytest.raises(TypeError, match=r"^where has dtype int64: expected a bool array$"):
        call_unmodified(fn, *args, where=np.ones((2, 4), np.int64))
    with pytest.raises(TypeError, match=r"^where has dtype float64: expected a bool array$"):
        call_unmodified(fn, *args, where=[[1.0, 0.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match=rf"^where of shape \(3,\) does not broadcast to "
                                         rf"{what} of shape \(2, 4\)$"):
        call_unmodified(fn, *args, where=np.ones(3, bool))
    with pytest.raises(ValueError, match=rf"^where of shape \(1, 2, 4\) does not broadcast "
                                         rf"to {what} of shape \(2, 4\)$"):
        call_unmodified(fn, *args, where=np.ones((1, 2, 4), bool))


def test_out_overlapping_where(frontend):
    buf = np.zeros(8, np.float64)
    x = np.zeros((2, 4))
    where = buf.view(bool)[:8].reshape(2, 4)
    with pytest.raises(ValueError, match="^out must not overlap where$"):
        frontend.softmax(x, where=where, out=buf.reshape(2, 4))
