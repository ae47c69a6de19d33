"""The compiled kernels' C fast path (src/fastpath.pxi) against the full path.

Every public function has a fast path for its common call.  It must give bitwise the
results of the full path on the same inputs (both dtypes, with and without ``out=``, on
every instruction-set variant), decline (return None) everything else -- bad input
included, before writing anything -- so that the full path raises its own exceptions, and
really be taken for the calls it is meant for.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from arrays import FLOAT_DTYPES, HAVE_CYTHON, assert_bitwise_equal, make_rng

from csoftmax import _api, _dispatch

pytestmark = pytest.mark.skipif(not HAVE_CYTHON, reason="the fast path is in the compiled kernels")


def _pairs():
    """(fast frontend, full-path frontend) per compiled instruction-set variant."""
    if not HAVE_CYTHON:
        return {}
    return {path: (fe, _api.Frontend(fe.kernels, f"full-{path}", fast=False))
            for path, fe in _dispatch.cpu_frontends().items()}


PAIRS = _pairs()
VARIANTS = sorted(PAIRS)
#: (rows, classes): one sample, short rows (tiles; 40 columns: float32's tiles, float64's
#: rows), the small-work bound, several threads, rows split over threads (> 16384 columns)
SHAPES = [(1, 10), (1, 1000), (7, 3), (65, 2), (33, 17), (50, 40), (32, 1000), (300, 70),
          (2, 40_000)]


def _results(value):
    return value if isinstance(value, tuple) else (value,)


def assert_same(fast, full, what):
    fast, full = _results(fast), _results(full)
    assert len(fast) == len(full), what
    for a, b in zip(fast, full):
        assert type(a) is type(b), f"{what}: {type(a)} vs {type(b)}"
        assert_bitwise_equal(a, b, what)


def _calls(n, c, dtype, rng):
    """(name, fn(frontend) -> result, fast-path function, its arguments) of the common calls."""
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    x[rng.random((n, c)) < 0.02] = -np.inf
    labels = rng.integers(0, c, size=n)
    labels[::4] = -100
    x[np.arange(n), np.maximum(labels, 0)] = 0.5
    probs = rng.random((n, c)).astype(dtype)
    g = rng.standard_normal((n, c)).astype(dtype)
    a = np.exp(x - x.max(axis=1, keepdims=True)).astype(dtype)
    lab32 = labels.astype(np.int32)
    w = (rng.random(c) + 0.25).astype(dtype)
    w[0] = 0.0                                   # a class of no weight
    ignored = np.full(n, -100)
    calls = [
        ("softmax", lambda f: f.softmax(x)),
        ("softmax axis=1", lambda f: f.softmax(x, axis=1)),
        ("log_softmax", lambda f: f.log_softmax(x, num_threads=2)),
        ("logsumexp", lambda f: f.logsumexp(x)),
        ("softmax_backward", lambda f: f.softmax_backward(g, a)),
        ("log_softmax_backward", lambda f: f.log_softmax_backward(g, x, num_threads=2)),
        ("cross_entropy", lambda f: f.cross_entropy(x, labels)),
        ("cross_entropy int32 sum", lambda f: f.cross_entropy(x, lab32, reduction="sum")),
        ("cross_entropy none smoothed", lambda f: f.cross_entropy(
            x, labels, reduction="none", label_smoothing=0.25, num_threads=2)),
        ("cross_entropy ignore_index", lambda f: f.cross_entropy(
            x, np.maximum(labels, 0), ignore_index=0)),
        ("cross_entropy prob", lambda f: f.cross_entropy(x, probs)),
        ("cross_entropy_with_grad", lambda f: f.cross_entropy_with_grad(x, labels)),
        ("cross_entropy_with_grad none", lambda f: f.cross_entropy_with_grad(
            x, lab32, reduction="none", num_threads=2)),
        ("cross_entropy_with_grad prob", lambda f: f.cross_entropy_with_grad(
            x, probs, reduction="sum", label_smoothing=0.5)),
        ("cross_entropy weighted", lambda f: f.cross_entropy(x, labels, weight=w)),
        ("cross_entropy weighted int32 none smoothed", lambda f: f.cross_entropy(
            x, lab32, weight=w, reduction="none", label_smoothing=0.1, num_threads=2)),
        ("cross_entropy weighted ignore_index", lambda f: f.cross_entropy(
            x, np.maximum(labels, 0), weight=w, ignore_index=0, reduction="sum")),
        ("cross_entropy weighted, all ignored", lambda f: f.cross_entropy(
            x, ignored, weight=w)),
        ("cross_entropy weighted prob", lambda f: f.cross_entropy(x, probs, weight=w)),
        ("cross_entropy_with_grad weighted", lambda f: f.cross_entropy_with_grad(
            x, labels, weight=w)),
        ("cross_entropy_with_grad weighted smoothed", lambda f: f.cross_entropy_with_grad(
            x, lab32, weight=w, label_smoothing=0.2, num_threads=2)),
        ("cross_entropy_with_grad weighted prob", lambda f: f.cross_entropy_with_grad(
            x, probs, weight=w, reduction="none")),
    ]
    if n == 1:
        x1, g1, a1, p1 = x[0], g[0], a[0], probs[0]
        t1 = int(max(labels[0], 0))
        calls += [
            ("softmax 1-D", lambda f: f.softmax(x1)),
            ("logsumexp 1-D", lambda f: f.logsumexp(x1)),
            ("softmax_backward 1-D", lambda f: f.softmax_backward(g1, a1)),
            ("cross_entropy 1-D", lambda f: f.cross_entropy(x1, t1)),
            ("cross_entropy 1-D none", lambda f: f.cross_entropy(x1, t1, reduction="none")),
            ("cross_entropy 1-D prob", lambda f: f.cross_entropy(x1, p1)),
            ("cross_entropy_with_grad 1-D", lambda f: f.cross_entropy_with_grad(x1, t1)),
            ("cross_entropy 1-D weighted", lambda f: f.cross_entropy(x1, t1, weight=w)),
            ("cross_entropy_with_grad 1-D weighted", lambda f: f.cross_entropy_with_grad(
                x1, t1, weight=w)),
        ]
    return calls


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{c}" for n, c in SHAPES])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_equals_full_path(variant, shape, dtype):
    fast, full = PAIRS[variant]
    rng = make_rng("fast-path", shape, np.dtype(dtype).name)
    for name, call in _calls(*shape, dtype, rng):
        assert_same(call(fast), call(full), f"{variant} {name} {shape}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_out(variant, dtype):
    """out=: a separate array or the input itself (in place), same bits as the full path."""
    fast, full = PAIRS[variant]
    rng = make_rng("fast-path-out", np.dtype(dtype).name)
    for n, c in [(1, 10), (40, 30), (32, 1000)]:
        x = rng.standard_normal((n, c)).astype(dtype)
        g = rng.standard_normal((n, c)).astype(dtype)
        labels = rng.integers(0, c, size=n)
        for name in ("softmax", "log_softmax"):
            want = getattr(full, name)(x)
            out = np.full_like(x, 7.0)
            assert getattr(fast, name)(x, out=out) is out
            assert_bitwise_equal(out, want, name)
            y = x.copy()
            assert getattr(fast, name)(y, out=y) is y
            assert_bitwise_equal(y, want, f"{name} in place")
        for name in ("softmax_backward", "log_softmax_backward"):
            want = getattr(full, name)(g, x)
            for target in ("new", "g", "a"):
                gg, aa = g.copy(), x.copy()
                out = {"new": np.empty_like(x), "g": gg, "a": aa}[target]
                assert getattr(fast, name)(gg, aa, out=out) is out
                assert_bitwise_equal(out, want, f"{name} out={target}")
        w = (rng.random(c) + 0.5).astype(dtype)
        loss, grad = full.cross_entropy_with_grad(x, labels, weight=w)
        out = np.empty_like(x)
        loss2, grad2 = fast.cross_entropy_with_grad(x, labels, weight=w, out=out)
        assert grad2 is out
        assert_same((loss2, grad2), (loss, grad), "cross_entropy_with_grad weight= out=")
        loss, grad = full.cross_entropy_with_grad(x, labels)
        out = np.empty_like(x)
        loss2, grad2 = fast.cross_entropy_with_grad(x, labels, out=out)
        assert grad2 is out
        assert_same((loss2, grad2), (loss, grad), "cross_entropy_with_grad out=")
        y = x.copy()
        loss3, grad3 = fast.cross_entropy_with_grad(y, labels, out=y)
        assert grad3 is y
        assert_same((loss3, grad3), (loss, grad), "cross_entropy_with_grad in place")


def _same_softmax_calls(fast, full, x, what, **kw):
    """softmax, log_softmax and logsumexp of x with options kw: the fast path's bits are the
    full path's, at one and two threads, into out= and in place."""
    for name in ("softmax", "log_softmax", "logsumexp"):
        for threads in (None, 2):
            assert_same(getattr(fast, name)(x, num_threads=threads, **kw),
                        getattr(full, name)(x, num_threads=threads, **kw),
                        f"{what} {name} num_threads={threads}")
    for name in ("softmax", "log_softmax"):
        want = getattr(full, name)(x, **kw)
        out = np.full_like(x, 7.0)
        assert getattr(fast, name)(x, out=out, **kw) is out
        assert_bitwise_equal(out, want, f"{what} {name} out=")
        y = x.copy()
        assert getattr(fast, name)(y, out=y, **kw) is y
        assert_bitwise_equal(y, want, f"{what} {name} in place")


#: (shape, axis) over an axis that is not the last: the strided kernels, or rows of C where
#: the axes after it are of size 1; a work large enough for two threads
MIDDLE = [((3, 5, 7), 1), ((3, 5, 7), 0), ((2, 10, 64), 1), ((4, 1000, 1), 1),
          ((2, 3, 4, 5), 2), ((1, 33, 300), -2), ((6, 40, 1, 1), 1), ((2, 21, 16, 32), 1)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_middle_axis(variant, dtype):
    """softmax, log_softmax and logsumexp over an axis that is not the last: the fast path
    takes them (the strided kernels read x in place) with the full path's bits, out= and in
    place included."""
    fast, full = PAIRS[variant]
    k = fast.kernels
    rng = make_rng("fast-middle", np.dtype(dtype).name)
    for shape, axis in MIDDLE:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        x.reshape(-1)[::37] = -np.inf
        what = f"{variant} {shape} axis {axis}"
        assert k.fast_rows(0, x, axis, None, None) is not None, what
        assert k.fast_logsumexp(x, axis, None) is not None, what
        _same_softmax_calls(fast, full, x, what, axis=axis)


@pytest.mark.parametrize("dtype", (*FLOAT_DTYPES, np.float16),
                         ids=["float32", "float64", "float16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_logsumexp_keepdims(variant, dtype, monkeypatch):
    """logsumexp(keepdims=True), masked or not, over the last or a middle axis and of 1-D x:
    the fast path's result with the axis put back, the full path's shape, type and bits."""
    fast, full = PAIRS[variant]
    taken = []

    def spy_on(fn):
        def spy(*args):
            r = fn(*args)
            taken.append(r is not None)
            return r
        return spy

    for name in ("_fast_logsumexp", "_fast_masked"):
        monkeypatch.setattr(fast, name, spy_on(getattr(fast, name)))
    rng = make_rng("fast-keepdims", np.dtype(dtype).name)
    cases = [((7,), -1, False), ((4, 9), -1, True), ((4, 9), 0, False), ((4, 9), -2, False),
             ((3, 5, 7), 1, False), ((3, 5, 7), -1, True), ((2, 3, 4, 5), 2, False)]
    for shape, axis, masked in cases:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        kw = {"where": rng.random(shape) < 0.7} if masked else {}
        what = f"{variant} {shape} axis {axis} masked={masked}"
        taken.clear()
        got = fast.logsumexp(x, axis, keepdims=True, **kw)
        # (16-bit calls take it unmasked: over the last axis, or a middle one with
        # positions after it)
        assert taken == [dtype != np.float16 or not masked], what
        assert_same(got, full.logsumexp(x, axis, keepdims=True, **kw), what)
        assert got.shape == tuple(1 if i == axis % len(shape) else d
                                  for i, d in enumerate(shape)), what


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_backward_middle_axis(variant, dtype):
    """softmax_backward and log_softmax_backward over an axis that is not the last: the
    fast path takes them (the strided kernels, rows of C where the axes after it are of
    size 1) with the full path's bits, at one and two threads, into out= and in place
    over either input."""
    fast, full = PAIRS[variant]
    k = fast.kernels
    rng = make_rng("fast-backward-middle", np.dtype(dtype).name)
    for (shape, axis), op in itertools.product(MIDDLE, ("softmax", "log_softmax")):
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        a = getattr(full, op)(x, axis=axis)
        g = rng.standard_normal(shape).astype(dtype)
        name = f"{op}_backward"
        what = f"{variant} {shape} axis {axis} {name}"
        assert k.fast_backward(0 if op == "softmax" else 1, g, a, axis, None, None) is not None
        for threads in (None, 2):
            assert_same(getattr(fast, name)(g, a, axis, num_threads=threads),
                        getattr(full, name)(g, a, axis, num_threads=threads),
                        f"{what} num_threads={threads}")
        want = getattr(full, name)(g, a, axis)
        out = np.full_like(x, 7.0)
        assert getattr(fast, name)(g, a, axis, out=out) is out
        assert_bitwise_equal(out, want, f"{what} out=")
        for which in (0, 1):
            inputs = [g.copy(), a.copy()]
            assert getattr(fast, name)(*inputs, axis, out=inputs[which]) is inputs[which]
            assert_bitwise_equal(inputs[which], want, f"{what} in place over input {which}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_cross_entropy_class_axis(variant, dtype):
    """Cross-entropy with the classes on an axis that is not the last ((N, C, d1, ...)
    logits, labels of the other axes' shape): the fast path takes it (the strided kernels,
    or rows where the axes after it are of size 1) with the full path's bits, every option
    it takes, out= and two threads; probability targets over such an axis are declined and
    give the full path's result."""
    fast, full = PAIRS[variant]
    k = fast.kernels
    rng = make_rng("fast-class-axis", np.dtype(dtype).name)
    for shape, axis in MIDDLE:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        c = shape[axis]
        positions = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
        labels = rng.integers(0, c, size=positions)
        labels.reshape(-1)[::5] = -100
        w = (rng.random(c) + 0.25).astype(dtype)
        what = f"{variant} {shape} axis {axis}"
        assert k.fast_cross_entropy(x, labels, axis, -100, "mean", 0.0, None, True,
                                    None) is not None, what
        calls = [
            ("mean", dict()),
            ("sum, smoothed, int32", dict(reduction="sum", label_smoothing=0.3)),
            ("none, weighted", dict(reduction="none", weight=w)),
            ("mean, weighted, two threads", dict(weight=w, num_threads=2)),
        ]
        for name, kw in calls:
            t = labels.astype(np.int32) if "int32" in name else labels
            assert_same(fast.cross_entropy(x, t, axis=axis, **kw),
                        full.cross_entropy(x, t, axis=axis, **kw), f"{what} loss {name}")
            assert_same(fast.cross_entropy_with_grad(x, t, axis=axis, **kw),
                        full.cross_entropy_with_grad(x, t, axis=axis, **kw),
                        f"{what} with grad {name}")
        want = full.cross_entropy_with_grad(x, labels, axis=axis)
        out = np.full_like(x, 7.0)
        got = fast.cross_entropy_with_grad(x, labels, axis=axis, out=out)
        assert got[1] is out
        assert_same(got, want, f"{what} out=")
        probs = rng.random(shape).astype(dtype)
        inner = int(np.prod(shape[axis % len(shape) + 1:]))
        if inner > 1:
            assert k.fast_cross_entropy(x, probs, axis, -100, "mean", 0.0, None, False,
                                        None) is None, what
        assert_same(fast.cross_entropy(x, probs, axis=axis),
                    full.cross_entropy(x, probs, axis=axis), f"{what} probabilities")


def _assert_same_outcome(fast, full, name, args, kwargs, what):
    """The function name gives the same result, or raises the same exception with the same
    message, on both frontends."""
    outcomes = []
    for frontend in (fast, full):
        try:
            outcomes.append(("ok", getattr(frontend, name)(*args, **kwargs)))
        except Exception as exc:  # noqa: BLE001 - compared below
            outcomes.append(("error", (type(exc), str(exc))))
    if outcomes[0][0] == "ok":
        assert_same(outcomes[0][1], outcomes[1][1], what)
    else:
        assert outcomes[0] == outcomes[1], what


def _masks(shape, rng):
    """(what, where) masks the fast path takes: x's shape (random, with rows keeping
    nothing and rows keeping everything) and one row for every row, as (n,) and with
    leading ones (a padding mask)."""
    n = shape[-1]
    full = rng.random(shape) < 0.7
    flat = full.reshape(-1, n)
    flat[0] = False
    flat[-1] = True
    row = rng.random(n) < 0.8
    return [("full", full), ("(n,)", row), ("leading ones", row.reshape((1,) * (len(shape) - 1)
                                                                        + (n,)))]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_masked(variant, dtype):
    """softmax, log_softmax and logsumexp with where= over the last axis: the fast path
    takes a bool mask of x's shape or one row for all rows, with the full path's bits (out=,
    in place, two threads, 1-D x); other masks are declined and give the full path's result."""
    fast, full = PAIRS[variant]
    k = fast.kernels
    rng = make_rng("fast-masked", np.dtype(dtype).name)
    for shape in [(1,), (5,), (3, 1), (7, 10), (4, 1000), (2, 3, 40), (300, 70)]:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        for mask_what, m in _masks(shape, rng):
            what = f"{variant} {shape} {mask_what}"
            assert k.fast_masked(0, x, m, -1, None, None) is not None, what
            _same_softmax_calls(fast, full, x, what, where=m)
    x = rng.standard_normal((6, 5)).astype(dtype)
    m = rng.random((6, 5)) < 0.5
    declined = [("a column mask (6, 1)", m[:, :1], {}), ("strided mask", m[:, ::-1], {}),
                ("axis 0", m, {"axis": 0}), ("mask of 3-D ones", m[None], {}),
                ("uint8 mask", m.view(np.uint8), {}), ("list mask", m.tolist(), {})]
    for what, mask, kw in declined:
        assert k.fast_masked(0, x, mask, kw.get("axis", -1), None, None) is None, what
        _assert_same_outcome(fast, full, "softmax", (x,), dict(where=mask, **kw), what)
    buf = np.zeros(6 * 5 * np.dtype(dtype).itemsize + 8, np.uint8)
    out = buf[:6 * 5 * np.dtype(dtype).itemsize].view(dtype).reshape(6, 5)
    overlapping = buf[:5].view(np.bool_)          # a (5,) mask in out's first bytes
    beside = buf[-8:-3].view(np.bool_)            # one in the same buffer, past out
    assert k.fast_masked(0, x, overlapping, -1, out, None) is None
    for frontend in (fast, full):
        with pytest.raises(ValueError, match="^out must not overlap where$"):
            frontend.softmax(x, where=overlapping, out=out)
    assert k.fast_masked(0, x, beside, -1, out, None) is out
    assert_same(out, full.softmax(x, where=beside), "mask beside out")


def _fast_calls(k, x, labels):
    """The kernels' fast-path functions on the common call: each must accept it."""
    weight = np.ones(x.shape[1], x.dtype)
    return {
        "fast_cross_entropy weighted": lambda: k.fast_cross_entropy(
            x, labels, -1, -100, "mean", 0.0, None, True, None, weight),
        "fast_rows": lambda: k.fast_rows(0, x, -1, None, None),
        "fast_logsumexp": lambda: k.fast_logsumexp(x, -1, None),
        "fast_backward": lambda: k.fast_backward(1, x, x, -1, None, None),
        "fast_cross_entropy": lambda: k.fast_cross_entropy(
            x, labels, -1, -100, "mean", 0.0, None, False, None),
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_common_calls_take_the_fast_path(variant):
    k = PAIRS[variant][0].kernels
    rng = make_rng("fast-taken")
    for dtype, (n, c) in itertools.product(FLOAT_DTYPES, SHAPES):
        x = rng.standard_normal((n, c)).astype(dtype)
        labels = rng.integers(0, c, size=n)
        for name, call in _fast_calls(k, x, labels).items():
            assert call() is not None, f"{name} declined {np.dtype(dtype).name} {(n, c)}"


def _declined_inputs(rng):
    """Inputs the fast path leaves to the full path: (description, function, args, kwargs)."""
    x = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, size=6)
    misaligned = np.frombuffer(np.zeros(x.nbytes + 1, np.uint8)[1:].data,
                               np.float64).reshape(6, 5)
    readonly = np.zeros_like(x)
    readonly.flags.writeable = False
    return [
        ("strided", "softmax", (x[:, ::2],), {}),
        ("Fortran order", "log_softmax", (np.asfortranarray(x),), {}),
        ("misaligned", "softmax", (misaligned,), {}),
        ("byte-swapped", "logsumexp", (x.astype(">f8"),), {}),
        ("float16", "softmax", (x.astype(np.float16),), {}),
        ("int", "softmax", (np.arange(6).reshape(2, 3),), {}),
        ("0-d", "softmax", (np.float64(1.0),), {}),
        ("empty", "softmax", (np.zeros((3, 0)),), {}),
        ("subclass", "softmax", (x.view(np.matrix),), {}),
        ("list", "cross_entropy", (x.tolist(), labels), {}),
        ("axis (0, 1)", "softmax", (x,), {"axis": (0, 1)}),
        ("numpy int axis", "log_softmax", (x,), {"axis": np.int64(0)}),
        ("axis 0, strided", "softmax", (x[:, ::2],), {"axis": 0}),
        ("backward axis 0, strided", "softmax_backward", (x[:, ::2], x[:, ::2]), {"axis": 0}),
        ("backward axis 2 of 2-D", "log_softmax_backward", (x, x), {"axis": 2}),
        ("backward axis 0, shapes", "softmax_backward", (x, x[:3]), {"axis": 0}),
        ("axis None", "logsumexp", (x,), {"axis": None}),
        ("keepdims, return_sign", "logsumexp", (x,), {"keepdims": True, "return_sign": True}),
        ("keepdims, axis 2 of 2-D", "logsumexp", (x,), {"keepdims": True, "axis": 2}),
        ("float32 weight for float64 logits", "cross_entropy", (x, labels),
         {"weight": np.ones(5, np.float32)}),
        ("weight list", "cross_entropy_with_grad", (x, labels),
         {"weight": [1.0, 2.0, 1.0, 0.5, 1.0]}),
        ("strided weight", "cross_entropy", (x, labels), {"weight": np.arange(10.0)[::2]}),
        ("weight with z_loss", "cross_entropy", (x, labels),
         {"weight": np.ones(5), "z_loss": 1e-3}),
        ("int16 labels", "cross_entropy", (x, labels.astype(np.int16)), {}),
        ("uint64 labels", "cross_entropy", (x, labels.astype(np.uint64)), {}),
        ("3-D logits", "cross_entropy", (x.reshape(2, 3, 5), labels[:2]), {}),
        ("class axis 0, labels of the wrong shape", "cross_entropy", (x, labels), {"axis": 0}),
        ("class axis 0, float16", "cross_entropy_with_grad",
         (x.reshape(2, 3, 5).astype(np.float16), np.ones((2, 5), np.int64)), {"axis": 1}),
        ("numpy int target", "cross_entropy", (x[0], np.int64(2)), {}),
        ("float32 probs for float64 logits", "cross_entropy",
         (x, np.abs(x).astype(np.float32)), {}),
        ("mixed dtypes", "softmax_backward", (x.astype(np.float32), x), {}),
        ("numpy num_threads", "softmax", (x,), {"num_threads": np.int64(2)}),
        ("label_smoothing numpy", "cross_entropy", (x, labels),
         {"label_smoothing": np.float64(0.1)}),
        ("huge ignore_index", "cross_entropy", (x, labels), {"ignore_index": 2 ** 70}),
    ] + _bad_inputs(x, labels, readonly)


def _bad_inputs(x, labels, readonly):
    """Bad input: the full path raises; the fast path must decline and leave it so."""
    bad_label = labels.copy()
    bad_label[3] = 5
    out_holding_weight = np.ones(40)[:30].reshape(6, 5)   # a view: the test keeps it
    return [
        ("label out of range", "cross_entropy", (x, bad_label), {}),
        ("negative label", "cross_entropy_with_grad", (x, -labels - 1), {}),
        ("1-D label out of range", "cross_entropy", (x[0], 7), {}),
        ("target length", "cross_entropy", (x, labels[:4]), {}),
        ("reduction", "cross_entropy", (x, labels), {"reduction": "avg"}),
        ("label_smoothing > 1", "cross_entropy", (x, labels), {"label_smoothing": 1.5}),
        ("label_smoothing nan", "cross_entropy", (x, labels), {"label_smoothing": float("nan")}),
        ("num_threads 0", "cross_entropy", (x, labels), {"num_threads": 0}),
        ("num_threads -1", "softmax", (x,), {"num_threads": -1}),
        ("num_threads float", "logsumexp", (x,), {"num_threads": 2.0}),
        ("num_threads bool", "softmax", (x,), {"num_threads": True}),
        ("axis out of range", "softmax", (x,), {"axis": 2}),
        ("prob target, ignore_index >= 0", "cross_entropy", (x, np.abs(x)), {"ignore_index": 1}),
        ("out shape", "softmax", (x,), {"out": np.empty((5, 6))}),
        ("out dtype", "log_softmax", (x,), {"out": np.empty((6, 5), np.float32)}),
        ("out read-only", "softmax", (x,), {"out": readonly}),
        ("out of cross_entropy_with_grad", "cross_entropy_with_grad", (x, labels),
         {"out": np.empty((6, 4))}),
        ("backward shapes", "softmax_backward", (x, x[:3]), {}),
        ("complex", "softmax", (x.astype(complex),), {}),
        ("1-D logits, array target", "cross_entropy", (x[0], labels), {}),
        ("weight length", "cross_entropy", (x, labels), {"weight": np.ones(4)}),
        ("weight 2-D", "cross_entropy_with_grad", (x, labels), {"weight": np.ones((1, 5))}),
        ("weight complex", "cross_entropy", (x, labels), {"weight": np.ones(5, complex)}),
        ("weight in out", "cross_entropy_with_grad", (x, labels),
         {"out": out_holding_weight, "weight": out_holding_weight.reshape(-1)[:5]}),
        ("weight, label out of range", "cross_entropy", (x, bad_label), {"weight": np.ones(5)}),
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_declined_inputs_same_outcome(variant):
    """Declined calls (unusual layouts, options, bad input) give what the full path gives:
    the same result, or the same exception with the same message, and change nothing."""
    fast, full = PAIRS[variant]
    rng = make_rng("fast-declined")
    for what, name, args, kwargs in _declined_inputs(rng):
        outcomes = []
        for frontend in (fast, full):
            kw = dict(kwargs)
            if isinstance(kw.get("out"), np.ndarray) and kw["out"].flags.writeable:
                kw["out"] = kw["out"].copy() if kw["out"].base is None else kw["out"]
            before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
            try:
                outcomes.append(("ok", getattr(frontend, name)(*args, **kw)))
            except Exception as exc:  # noqa: BLE001 - compared below
                outcomes.append(("error", (type(exc), str(exc))))
            for a, b in zip(args, before):
                if isinstance(a, np.ndarray):
                    assert_bitwise_equal(a, b, f"{what}: input modified")
        (kind_fast, fast_value), (kind_full, full_value) = outcomes
        assert kind_fast == kind_full, f"{what}: {outcomes}"
        if kind_fast == "error":
            assert fast_value == full_value, what
        else:
            assert_same(fast_value, full_value, what)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_input_declined_before_writing(variant):
    """The raw fast-path functions return None on bad input, and leave ``out`` alone."""
    k = PAIRS[variant][0].kernels
    rng = make_rng("fast-bad")
    x = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, size=6)
    bad = labels.copy()
    bad[2] = -3
    out = np.full_like(x, 7.0)
    assert k.fast_cross_entropy(x, bad, -1, -100, "mean", 0.0, None, True, out) is None
    assert (out == 7.0).all()
    assert k.fast_cross_entropy(x, labels, -1, -100, "median", 0.0, None, False, None) is None
    assert k.fast_cross_entropy(x, labels, -1, -100, "mean", 0.0, 0, False, None) is None
    assert k.fast_cross_entropy(x, labels, -1, -100, "mean", 2.0, None, False, None) is None
    assert k.fast_cross_entropy(x, bad, -1, -100, "mean", 0.0, None, True, out,
                                np.ones(5)) is None
    assert k.fast_cross_entropy(x, labels, -1, -100, "mean", 0.0, None, True, out,
                                out[0]) is None          # the weight in out
    assert k.fast_cross_entropy(x, labels, -1, -100, "mean", 0.0, None, True, out,
                                np.ones(4)) is None
    assert (out == 7.0).all()
    assert k.fast_rows(0, x, 1, np.empty((6, 5), np.float32), None) is None
    assert k.fast_rows(0, x, 2, None, None) is None
    assert k.fast_rows(1, x, -3, None, None) is None
    assert k.fast_logsumexp(x, -3, None) is None
    assert k.fast_logsumexp(x, True, None) is None
    assert k.fast_backward(0, x, x[:2], -1, None, None) is None
    buf = np.zeros(60)
    partial = buf[5:35].reshape(6, 5)  # overlaps the input without being it
    assert k.fast_rows(0, buf[:30].reshape(6, 5), -1, partial, None) is None
    assert k.fast_backward(0, x, buf[:30].reshape(6, 5), -1, partial, None) is None
    assert k.fast_cross_entropy(buf[:30].reshape(6, 5), labels, -1, -100, "mean", 0.0, None, True,
                                partial) is None
    assert (buf == 0).all()


def _targets_in_out(x, rng):
    """(what, target, out) where out's memory holds the target: the target is out itself,
    the logits are both (out=x, target=x), labels are viewed in out's buffer (int32 and
    int64, at its start and in its middle)."""
    n, c = x.shape
    probs_out = rng.random((n, c)).astype(x.dtype)
    cases = [("probabilities are out", probs_out, probs_out)]
    xx = x.copy()
    cases.append(("out=x, target=x", xx, xx))
    for label_dtype in (np.int32, np.int64):
        for at in (0, x.nbytes // 2 // 8 * 8):
            out = np.zeros_like(x)
            buf = out.reshape(-1).view(np.uint8)[at:at + n * np.dtype(label_dtype).itemsize]
            labels = buf.view(label_dtype)
            labels[:] = rng.integers(0, c, size=n)
            cases.append((f"{np.dtype(label_dtype).name} labels in out at byte {at}", labels, out))
    return cases


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_out_overlapping_target_refused(variant, dtype):
    """An ``out=`` that shares memory with the targets (even as the same array) is refused
    with the full path's ValueError: the kernels read the targets while they write the
    gradient (the fast path once accepted them and returned a wrong gradient, or NaN rows
    from labels overwritten mid-call).  The raw fast path declines them before writing."""
    fast, full = PAIRS[variant]
    rng = make_rng("fast-out-target")
    x = rng.standard_normal((8, 64)).astype(dtype)
    for what, target, out in _targets_in_out(x, rng):
        logits = target if target is out else x
        before_target, before_out = target.copy(), out.copy()
        assert fast.kernels.fast_cross_entropy(logits, target, -1, -100, "mean", 0.0, None,
                                               True, out) is None, what
        assert_bitwise_equal(out, before_out, what)
        for frontend in (fast, full):
            with pytest.raises(ValueError, match="^out must not overlap target$"):
                frontend.cross_entropy_with_grad(logits, target, out=out)
            assert_bitwise_equal(target, before_target, what)
        # the loss alone reads and writes nothing of it: accepted, the same bits
        assert_same(fast.cross_entropy(logits, target), full.cross_entropy(logits, target),
                    what)


#: z-loss, soft cap and the return_* flags: the fast path takes every combination
EXTRAS = [dict(z_loss=1e-3), dict(softcap=3.0), dict(return_token_accuracy=True),
          dict(return_z_loss=True), dict(z_loss=0.5, return_z_loss=True),
          dict(z_loss=1e-4, softcap=2.5, return_z_loss=True, return_token_accuracy=True),
          dict(softcap=1, return_token_accuracy=True), dict(z_loss=2)]


def _assert_extras_same(fast, full, name, args, kwargs, what):
    """The function name gives the full path's result type and bits on the fast path."""
    a, b = getattr(fast, name)(*args, **kwargs), getattr(full, name)(*args, **kwargs)
    assert type(a) is type(b), f"{what}: {type(a)} vs {type(b)}"
    assert_same(a, b, what)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_cross_entropy_extras(variant, dtype):
    """z_loss, softcap, return_z_loss and return_token_accuracy on the fast path: taken
    (rows, tiles, rows split over threads, a middle class axis, probability targets where
    accuracy is not asked), with the full path's named tuples and bits for every
    reduction, weights (the z-loss and accuracy count positions, not weight), smoothing,
    ignored rows, out= and two threads."""
    fast, full = PAIRS[variant]
    k = fast.kernels
    rng = make_rng("fast-extras", np.dtype(dtype).name)
    cases = [((n, c), -1) for n, c in SHAPES] + MIDDLE + [((1000,), 0)]
    for shape, axis in cases:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        ax = axis % len(shape)
        c = shape[ax]
        positions = shape[:ax] + shape[ax + 1:]
        labels = rng.integers(0, c, size=positions)
        if labels.ndim:
            labels.reshape(-1)[::5] = -100
            x.reshape(-1)[::7] = np.nan if c > 2 else x.reshape(-1)[0]  # rows of NaN loss
        else:
            labels = int(labels)
        w = (rng.random(c) + 0.25).astype(dtype)
        probs = rng.random(shape).astype(dtype)
        for i, kw in enumerate(EXTRAS):
            what = f"{variant} {shape} axis {axis} {kw}"
            assert k.fast_cross_entropy(x, labels, axis, -100, "mean", 0.0, None, True, None,
                                        None, kw.get("z_loss", 0.0), kw.get("softcap"),
                                        kw.get("return_z_loss", False),
                                        kw.get("return_token_accuracy", False)) is not None, what
            reduction = ("mean", "sum", "none")[i % 3]
            more = [dict(reduction=reduction), dict(reduction="mean", weight=w),
                    dict(reduction="none", weight=w, label_smoothing=0.2, num_threads=2)]
            t32 = labels.astype(np.int32) if isinstance(labels, np.ndarray) else labels
            for extra in more:
                opts = {**kw, **extra}
                for t, name in itertools.product((labels, t32), ("cross_entropy",
                                                                  "cross_entropy_with_grad")):
                    _assert_extras_same(fast, full, name, (x, t), dict(axis=axis, **opts),
                                        f"{what} {extra} {name}")
            out = np.full_like(x, 7.0)
            got = fast.cross_entropy_with_grad(x, labels, axis=axis, out=out, **kw)
            assert got[1] is out
            assert_same(got, full.cross_entropy_with_grad(x, labels, axis=axis, **kw),
                        f"{what} out=")
            if ax == len(shape) - 1 and not kw.get("return_token_accuracy"):
                _assert_extras_same(fast, full, "cross_entropy_with_grad", (x, probs),
                                    dict(reduction=reduction, **kw), f"{what} probabilities")


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_extras_declined(variant):
    """Options the fast path leaves to the full path (NumPy scalars, bad values, accuracy
    with probability targets) give the full path's result or exception, and the raw fast
    path declines them."""
    fast, full = PAIRS[variant]
    rng = make_rng("fast-extras-declined")
    x = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, size=6)
    probs = np.abs(x)
    cases = [
        (labels, dict(z_loss=np.float64(1e-3))),
        (labels, dict(softcap=np.float32(2.0))),
        (labels, dict(return_z_loss=np.True_)),
        (labels, dict(return_token_accuracy=1)),
        (labels, dict(z_loss=True)),
        (labels, dict(z_loss=-1.0)),
        (labels, dict(z_loss=float("nan"))),
        (labels, dict(z_loss="0.1")),
        (labels, dict(softcap=0.0)),
        (labels, dict(softcap=-2)),
        (labels, dict(softcap=float("inf"))),
        (labels, dict(softcap=2 ** 70)),
        (probs, dict(return_token_accuracy=True)),
    ]
    for target, kw in cases:
        what = f"{variant} {kw}"
        assert fast.kernels.fast_cross_entropy(
            x, target, -1, -100, "mean", 0.0, None, False, None, None, kw.get("z_loss", 0.0),
            kw.get("softcap"), kw.get("return_z_loss", False),
            kw.get("return_token_accuracy", False)) is None, what
        outcomes = []
        for frontend in (fast, full):
            try:
                outcomes.append(("ok", frontend.cross_entropy_with_grad(x, target, **kw)))
            except Exception as exc:  # noqa: BLE001 - compared below
                outcomes.append(("error", (type(exc), str(exc))))
        (kind_fast, a), (kind_full, b) = outcomes
        assert kind_fast == kind_full, f"{what}: {outcomes}"
        if kind_fast == "error":
            assert a == b, what
        else:
            assert type(a) is type(b)
            assert_same(a, b, what)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_masked_backward(variant, dtype):
    """softmax_backward and log_softmax_backward with where= over the last axis (the
    backward of csoftmax.torch.softmax(..., mask=m)): the fast path takes the masks the
    forward takes, with the full path's bits (out=, in place over either input, two
    threads, 1-D); other masks, mixed dtypes and an out= overlapping the mask are declined
    and give the full path's result or error."""
    fast, full = PAIRS[variant]
    k = fast.kernels
    rng = make_rng("fast-masked-backward", np.dtype(dtype).name)
    ops = {"softmax_backward": 3, "log_softmax_backward": 4}
    for shape in [(1,), (5,), (3, 1), (7, 10), (4, 1000), (2, 3, 40), (300, 70)]:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        for mask_what, m in _masks(shape, rng):
            for name, op in ops.items():
                what = f"{variant} {shape} {mask_what} {name}"
                a = (full.softmax if op == 3 else full.log_softmax)(x, where=m)
                assert k.fast_masked(op, a, m, -1, None, None, g) is not None, what
                fn_fast, fn_full = getattr(fast, name), getattr(full, name)
                want = fn_full(g, a, where=m)
                assert_same(fn_fast(g, a, where=m), want, what)
                assert_same(fn_fast(g, a, where=m, num_threads=2),
                            fn_full(g, a, where=m, num_threads=2), f"{what} two threads")
                out = np.full_like(a, 7.0)
                assert fn_fast(g, a, where=m, out=out) is out
                assert_same(out, want, f"{what} out=")
                for inplace in ("grad_output", "output"):
                    gi, ai = g.copy(), a.copy()
                    target = gi if inplace == "grad_output" else ai
                    assert fn_fast(gi, ai, where=m, out=target) is target
                    assert_same(target, want, f"{what} in place over {inplace}")
    x = rng.standard_normal((6, 5)).astype(dtype)
    m = rng.random((6, 5)) < 0.5
    a = fast.softmax(x, where=m)
    declined = [("a column mask (6, 1)", (x, a, m[:, :1]), {}),
                ("axis 0", (x, a, m), {"axis": 0}),
                ("grad_output of another dtype", (x.astype(np.float16), a, m), {}),
                ("grad_output of another shape", (x[:3], a, m), {})]
    for what, (gd, ad, md), kw in declined:
        assert k.fast_masked(3, ad, md, kw.get("axis", -1), None, None, gd) is None, what
        _assert_same_outcome(fast, full, "softmax_backward", (gd, ad), dict(where=md, **kw),
                             what)
    buf = np.zeros(6 * 5 * np.dtype(dtype).itemsize + 8, np.uint8)
    out = buf[:6 * 5 * np.dtype(dtype).itemsize].view(dtype).reshape(6, 5)
    overlapping = buf[:5].view(np.bool_)
    assert k.fast_masked(3, a, overlapping, -1, out, None, x) is None
    for frontend in (fast, full):
        with pytest.raises(ValueError, match="^out must not overlap where$"):
            frontend.log_softmax_backward(x, a, where=overlapping, out=out)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_small_integer_labels(variant):
    """Labels of another integer dtype of up to 4 bytes (uint8 segmentation masks with 255
    as ignore_index, int8, int16, uint16, uint32) take the fast path, converted to int64 as
    the full path converts them: the same bits, rows and a class axis 1; a bad label is
    declined and raises the full path's error; uint64 and byte-swapped labels, and more
    than 2**15 labels (a fresh int64 copy then cost more than the call), stay on the full
    path."""
    fast, full = PAIRS[variant]
    k = fast.kernels
    rng = make_rng("fast-small-labels")
    for shape, axis in [((7, 21), -1), ((2, 21, 8, 8), 1), ((300, 10), -1)]:
        x = rng.standard_normal(shape).astype(np.float32)
        positions = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
        labels = rng.integers(0, shape[axis], size=positions)
        labels.reshape(-1)[::4] = 120
        for dtype in (np.uint8, np.int8, np.int16, np.uint16, np.uint32):
            t = labels.astype(dtype)
            what = f"{variant} {shape} {np.dtype(dtype)}"
            assert k.fast_cross_entropy(x, t, axis, 120, "sum", 0.0, None, True,
                                        None) is not None, what
            for kw in (dict(reduction="none"), dict(weight=np.linspace(0.5, 2, shape[axis],
                                                                       dtype=np.float32)),
                       dict(z_loss=1e-3, return_token_accuracy=True)):
                for name in ("cross_entropy", "cross_entropy_with_grad"):
                    _assert_extras_same(fast, full, name, (x, t),
                                        dict(axis=axis, ignore_index=120, **kw), f"{what} {kw}")
        bad = labels.astype(np.uint8)
        bad.reshape(-1)[1] = 200
        assert k.fast_cross_entropy(x, bad, axis, 120, "mean", 0.0, None, False, None) is None
        _assert_same_outcome(fast, full, "cross_entropy", (x, bad),
                             dict(axis=axis, ignore_index=120), "bad uint8 label")
        big = np.zeros(shape[:1] + (1 << 15,), np.uint8)  # more labels than the C copy takes
        xb = np.zeros(shape[:1] + (shape[axis % len(shape)],) + (1 << 15,), np.float32)
        if axis != -1:
            assert k.fast_cross_entropy(xb, big, axis, 120, "mean", 0.0, None, False,
                                        None) is None
            _assert_same_outcome(fast, full, "cross_entropy", (xb, big), dict(axis=axis),
                                 "many uint8 labels")
        for dtype in (np.uint64, ">i4"):
            t = labels.astype(dtype)
            assert k.fast_cross_entropy(x, t, axis, 120, "mean", 0.0, None, False,
                                        None) is None
            _assert_same_outcome(fast, full, "cross_entropy", (x, t),
                                 dict(axis=axis, ignore_index=120), f"{np.dtype(dtype)} labels")
