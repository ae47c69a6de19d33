"""The public functions of the compiled backend (src/public.pxi).

``csoftmax.softmax`` and the six others are C-level functions there: they try the fast
path and hand every other call to the chosen Frontend's method of the same name.  They
must look like those methods (signature, docstring, pickling by name), give bitwise the
results of the full path on the same inputs, raise its exceptions with its messages, and
really answer the common call without the method.
"""

from __future__ import annotations

import inspect
import pickle
import types

import numpy as np
import pytest
from arrays import HAVE_CYTHON, assert_bitwise_equal, make_rng

import csoftmax
from csoftmax import _api, _dispatch

pytestmark = pytest.mark.skipif(not HAVE_CYTHON, reason="the C-level functions are compiled")

NAMES = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
         "cross_entropy", "cross_entropy_with_grad"]


def _full():
    return _api.Frontend(_dispatch.KERNELS, "full", fast=False)


@pytest.mark.parametrize("name", NAMES)
def test_public_function_looks_like_the_method(name):
    function, method = getattr(csoftmax, name), getattr(csoftmax._active, name)
    assert not isinstance(function, types.MethodType)
    assert inspect.signature(function) == inspect.signature(method)
    assert function.__doc__ == method.__doc__ and "Examples" in function.__doc__
    assert function.__module__ == "csoftmax" and function.__name__ == name
    assert pickle.loads(pickle.dumps(function)) is function


def _calls(rng):
    """(what, call(namespace)) for the fast path's calls and for calls it declines."""
    x = (rng.standard_normal((6, 5)) * 3).astype(np.float32)
    x64 = x.astype(np.float64)
    g = rng.standard_normal((6, 5)).astype(np.float32)
    a = np.exp(x - x.max(axis=1, keepdims=True)).astype(np.float32)
    labels = np.array([0, 4, -100, 2, 1, 3])
    probs = rng.random((6, 5)).astype(np.float32)
    mask = rng.random((6, 5)) < 0.7
    x3 = rng.standard_normal((2, 5, 3))
    t3 = rng.integers(0, 5, (2, 3))
    return [
        ("softmax", lambda f: f.softmax(x)),
        ("softmax float64 axis=0", lambda f: f.softmax(x64, axis=0, num_threads=2)),
        ("softmax out", lambda f: f.softmax(x, out=np.empty_like(x))),
        ("softmax where", lambda f: f.softmax(x, where=mask)),
        ("softmax list", lambda f: f.softmax([[1.0, 2.0], [3.0, -np.inf]])),
        ("softmax float16", lambda f: f.softmax(x.astype(np.float16))),
        ("softmax Fortran", lambda f: f.softmax(np.asfortranarray(x64))),
        ("log_softmax", lambda f: f.log_softmax(x, axis=-1)),
        ("log_softmax where", lambda f: f.log_softmax(x64, where=mask)),
        ("log_softmax 3-D axis=1", lambda f: f.log_softmax(x3, 1)),
        ("logsumexp", lambda f: f.logsumexp(x)),
        ("logsumexp 1-D", lambda f: f.logsumexp(x64[0])),
        ("logsumexp keepdims", lambda f: f.logsumexp(x, keepdims=True)),
        ("logsumexp b sign", lambda f: f.logsumexp(x64, b=-x64, return_sign=True)),
        ("logsumexp axis None", lambda f: f.logsumexp(x64, axis=None)),
        ("logsumexp where", lambda f: f.logsumexp(x64, where=mask)),
        ("softmax_backward", lambda f: f.softmax_backward(g, a)),
        ("softmax_backward where", lambda f: f.softmax_backward(g, a, where=mask)),
        ("log_softmax_backward", lambda f: f.log_softmax_backward(g, x, out=np.empty_like(g))),
        ("log_softmax_backward axis=0", lambda f: f.log_softmax_backward(g, x, axis=0)),
        ("cross_entropy", lambda f: f.cross_entropy(x, labels)),
        ("cross_entropy none smoothed", lambda f: f.cross_entropy(
            x, labels, reduction="none", label_smoothing=0.1)),
        ("cross_entropy prob", lambda f: f.cross_entropy(x64, probs.astype(np.float64))),
        ("cross_entropy extras", lambda f: f.cross_entropy(
            x, labels, z_loss=1e-3, return_z_loss=True, return_token_accuracy=True)),
        ("cross_entropy 3-D axis=1", lambda f: f.cross_entropy(x3, t3, axis=1)),
        ("cross_entropy list labels", lambda f: f.cross_entropy(x64, [0, 1, 2, 3, 4, 0])),
        ("cross_entropy_with_grad", lambda f: f.cross_entropy_with_grad(x, labels)),
        ("cross_entropy_with_grad out", lambda f: f.cross_entropy_with_grad(
            x64, labels, weight=np.linspace(0.5, 1.5, 5), out=np.empty_like(x64))),
        ("cross_entropy_with_grad softcap accuracy", lambda f: f.cross_entropy_with_grad(
            x, labels, softcap=5.0, return_token_accuracy=True)),
        ("cross_entropy_with_grad float16", lambda f: f.cross_entropy_with_grad(
            x.astype(np.float16), labels, reduction="sum")),
    ]


def _same(got, want, what):
    got_t, want_t = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert type(got) is type(want), what
    for a, b in zip(got_t, want_t):
        assert type(a) is type(b), f"{what}: {type(a)} vs {type(b)}"
        if b is not None:
            assert_bitwise_equal(a, b, what)


@pytest.mark.parametrize("index", range(len(_calls(make_rng(0)))))
def test_public_function_results_are_the_full_paths(index):
    what, call = _calls(make_rng(1))[index]
    _same(call(csoftmax), call(_full()), what)


BAD = [
    ("softmax axis", lambda f: f.softmax(np.ones((2, 3)), axis=2)),
    ("softmax complex", lambda f: f.softmax(np.ones((2, 3), complex))),
    ("softmax axis float", lambda f: f.softmax(np.ones((2, 3)), axis=1.5)),
    ("softmax out shape", lambda f: f.softmax(np.ones((2, 3)), out=np.empty((3, 2)))),
    ("softmax num_threads", lambda f: f.softmax(np.ones((2, 3)), num_threads=0)),
    ("softmax where shape", lambda f: f.softmax(np.ones((2, 3)), where=np.ones(4, bool))),
    ("log_softmax num_threads str", lambda f: f.log_softmax(np.ones((2, 3)), num_threads="2")),
    ("logsumexp axis", lambda f: f.logsumexp(np.ones((2, 3)), axis=-3)),
    ("softmax_backward shapes", lambda f: f.softmax_backward(np.ones((2, 3)), np.ones((3, 2)))),
    ("log_softmax_backward dtypes", lambda f: f.log_softmax_backward(
        np.ones((2, 3)), np.ones((2, 3), np.float32), out=np.empty((2, 3), np.float16))),
    ("cross_entropy label", lambda f: f.cross_entropy(np.ones((2, 3)), np.array([0, 3]))),
    ("cross_entropy reduction", lambda f: f.cross_entropy(
        np.ones((2, 3)), np.array([0, 1]), reduction="average")),
    ("cross_entropy flag", lambda f: f.cross_entropy(
        np.ones((2, 3)), np.array([0, 1]), return_z_loss="yes")),
    ("cross_entropy weight", lambda f: f.cross_entropy(
        np.ones((2, 3)), np.array([0, 1]), weight=np.ones(2))),
    ("cross_entropy_with_grad out", lambda f: f.cross_entropy_with_grad(
        np.ones((2, 3)), np.array([0, 1]), out=np.empty((2, 3), np.float32))),
    ("cross_entropy_with_grad smoothing", lambda f: f.cross_entropy_with_grad(
        np.ones((2, 3)), np.array([0, 1]), label_smoothing=1.5)),
]


@pytest.mark.parametrize("what,call", BAD, ids=[b[0] for b in BAD])
def test_public_function_errors_are_the_full_paths(what, call):
    with pytest.raises(Exception) as want:
        call(_full())
    with pytest.raises(type(want.value)) as got:
        call(csoftmax)
    assert str(got.value) == str(want.value), what


class _Refusing:
    """A frontend whose every method fails: what reaches it was not answered in C."""

    def __getattr__(self, name):
        def refuse(*args, **kwargs):
            raise LookupError(f"{name} reached the method")
        return refuse


def test_public_functions_answer_the_common_call_in_c():
    x = np.random.default_rng(0).standard_normal((4, 7))
    labels = np.array([0, 6, 3, 2])
    common = {
        "softmax": lambda: csoftmax.softmax(x),
        "log_softmax": lambda: csoftmax.log_softmax(x, axis=1, num_threads=1),
        "logsumexp": lambda: csoftmax.logsumexp(x),
        "softmax_backward": lambda: csoftmax.softmax_backward(x, x),
        "log_softmax_backward": lambda: csoftmax.log_softmax_backward(x, x),
        "cross_entropy": lambda: csoftmax.cross_entropy(x, labels, label_smoothing=0.1),
        "cross_entropy_with_grad": lambda: csoftmax.cross_entropy_with_grad(x, labels),
    }
    want = {name: call() for name, call in common.items()}
    _dispatch.KERNELS.bind_public(_Refusing())
    try:
        for name, call in common.items():
            _same(call(), want[name], name)
        with pytest.raises(LookupError, match="softmax reached the method"):
            csoftmax.softmax(x, where=x > 0)
        with pytest.raises(LookupError, match="cross_entropy reached the method"):
            csoftmax.cross_entropy(x, labels, return_token_accuracy=True)
    finally:
        _dispatch.KERNELS.bind_public(csoftmax._active)
    _same(csoftmax.softmax(x, where=x > 0), _full().softmax(x, where=x > 0), "rebound")


# The loss alone checks its labels in the kernel, as each unit reads them
# (src/calls.pxi, _cross_entropy_index_core's kept): every kind of unit, on one
# thread and on several, must count the kept rows as the full path does and
# leave a bad label to the full path's error.
LABEL_ROUTES = [
    ("tiles", (5000, 10), {}),
    ("smoothed tiles", (5000, 10), {"label_smoothing": 0.1, "ignore_index": 3}),
    ("binary tiles", (20000, 2), {}),
    ("capped tiles", (3000, 7), {"softcap": 5.0}),
    ("grouped rows", (300, 100), {}),
    ("smoothed rows", (40, 3000), {"label_smoothing": 0.1}),
    ("long rows", (40, 3000), {}),
    ("capped rows", (40, 3000), {"softcap": 5.0}),
    ("split rows", (2, 150000), {}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("what,shape,kwargs", LABEL_ROUTES, ids=[r[0] for r in LABEL_ROUTES])
def test_loss_alone_checks_its_labels_as_the_full_path(what, shape, kwargs, dtype):
    rng = make_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    n_rows, n = shape
    labels = rng.integers(0, n, n_rows)
    labels[1::5] = kwargs.get("ignore_index", -100)   # ignored rows among the kept ones
    full = _full()
    for threads in (1, 2, 3):
        for reduction in ("mean", "sum", "none"):
            for t in (labels, labels.astype(np.int32),
                      np.full(n_rows, kwargs.get("ignore_index", -100))):
                args = dict(reduction=reduction, num_threads=threads, **kwargs)
                _same(csoftmax.cross_entropy(x, t, **args), full.cross_entropy(x, t, **args),
                      f"{what} {threads} {reduction} {t.dtype}")
        for row in (0, n_rows // 2, n_rows - 1):
            for bad in (n, -1, 2**40):
                t = labels.copy()
                t[row] = bad
                with pytest.raises(ValueError) as want:
                    full.cross_entropy(x, t, num_threads=threads, **kwargs)
                with pytest.raises(ValueError) as got:
                    csoftmax.cross_entropy(x, t, num_threads=threads, **kwargs)
                assert str(got.value) == str(want.value), (what, threads, row, bad)
