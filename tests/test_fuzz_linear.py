"""Fuzzing ``linear_cross_entropy(_with_grad)`` against the same functions over the NumPy twin.

The recipe (hypothesis) draws the input ``(N, D)`` or ``(D,)``, the projection ``(V, D)`` or
``(V, k, D)``, a bias, class-index targets (ignored rows, edge values, every integer dtype) or
probabilities, class weights, the reduction, smoothing, ``ignore_index``, ``z_loss``,
``softcap``, the ``return_*`` flags, ``chunk_size`` and thread counts -- valid or not, in every
dtype, layout and container of ``test_fuzz`` -- and the property is that of ``test_fuzz``: the
call under test (the public function, or ``_linear.call`` over one compiled instruction-set
variant) returns what the twin returns within a dtype-sized tolerance, or both raise the same
``TypeError``/``ValueError``; no argument is modified.  The GEMMs are NumPy's in both calls, so
what differs is the fused cross-entropy of every chunk (and, for bad input, the order of the
checks, which must not).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import (
    ANY_THREADS,
    BAD_IGNORE,
    BAD_REDUCTION,
    BAD_SMOOTHING,
    BAD_SOFTCAP,
    BAD_WEIGHTS,
    BAD_Z_LOSS,
    FLOATS,
    GOOD_IGNORE,
    GOOD_REDUCTION,
    GOOD_SMOOTHING,
    GOOD_SOFTCAP,
    GOOD_THREADS,
    GOOD_Z_LOSS,
    INTS,
    LABEL_EDGES,
    LAYOUTS,
    TARGET,
    TARGETS,
    VALID,
    WEIGHTS,
    _array,
    _finite_max,
    _labels,
    _weight,
    _write_stats,  # noqa: F401 (the outcome counts of CSOFTMAX_FUZZ_STATS)
    check_call,
    fuzz_settings,
    make_operand,
    operand,
)

from csoftmax import _dispatch, _linear

#: casts of huge values overflow; complex weights are measured for the error units
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              # ComplexWarning, by its message: numpy.exceptions is NumPy >= 1.25 and
              # the wheel is tested on NumPy 1.23 too
              pytest.mark.filterwarnings("ignore:Casting complex values to real")]

NAMES = ("linear_cross_entropy", "linear_cross_entropy_with_grad")


class _Linear:
    """The two linear functions over one frontend (``_linear.call``)."""

    def __init__(self, frontend, name):
        self.frontend, self.name = frontend, name

    def __getattr__(self, fn):
        if fn not in NAMES:
            raise AttributeError(fn)
        with_grad = fn.endswith("_with_grad")

        def call(input, linear_weight, target, **kwargs):
            return _linear.call(self.frontend, input, linear_weight, target, with_grad,
                                **kwargs)

        return call


LINEAR_TARGETS = {name: t if name == "public" else _Linear(t, name)
                  for name, t in TARGETS.items()}
TWIN = _Linear(_dispatch.FRONTENDS["numpy"], "numpy")

GOOD_CHUNK = [None] * 3 + [1, 2, 3, 7, 64]
BAD_CHUNK = [0, -1, 1.5, "2", 2**70]
GOOD_FLAG = [False] * 3 + [True]
BAD_FLAG = ["yes", 1, None]


@st.composite
def linear_case(draw):
    valid = draw(VALID)
    n = draw(st.one_of(st.integers(0, 5), st.integers(1, 40), st.integers(100, 300)))
    d = draw(st.one_of(st.integers(0, 4), st.integers(1, 12)))
    v = draw(st.one_of(st.integers(1, 8), st.integers(1, 40), st.integers(30, 130)))
    extra = draw(st.sampled_from([()] * 5 + [(1,), (2,), (3,)]))
    one = not extra and draw(st.integers(0, 5)) == 0
    x_shape = (d,) if one else (n, d)
    w_shape = (v,) + extra + (d,)
    if not valid and draw(st.booleans()):  # a shape breaking some rule
        bad = draw(st.sampled_from(["x-3d", "x-0d", "w-1d", "features", "no-classes"]))
        if bad == "x-3d":
            x_shape = (2, n, d)
        elif bad == "x-0d":
            x_shape = ()
        elif bad == "w-1d":
            w_shape = (d,)
        elif bad == "features":
            w_shape = (v,) + extra + (d + 1,)
        else:
            w_shape = (0,) + extra + (d,)
    float_dtype = st.sampled_from(["float32", "float64"] * 3 + FLOATS + ["int64", "bool"])
    kinds = ["index"] * 6 + ["prob"] * 3 + ["list"]
    if not valid:
        kinds += ["bool", "wrong-shape", "object", "edges"]
    ignore = draw(GOOD_IGNORE if valid or draw(st.booleans()) else BAD_IGNORE)
    kind = draw(st.sampled_from(kinds))
    if valid and kind == "prob" and int(ignore) >= 0:
        ignore = -100
    return {
        "valid": valid,
        "name": draw(st.sampled_from(NAMES)),
        "x": draw(operand(valid, shape=x_shape, dtype=draw(float_dtype), special="moderate")),
        "w": draw(operand(valid, shape=w_shape, dtype=draw(float_dtype), special="moderate")),
        "bias": draw(st.sampled_from(["none", "none", "ok", "ok"]
                                     + ([] if valid else ["wrong-shape", "complex"]))),
        "target_kind": kind,
        "label_dtype": draw(st.sampled_from(["int64", "int32"] + INTS)),
        "label_edges": tuple(draw(st.lists(st.sampled_from(LABEL_EDGES), max_size=3)))
        if kind == "edges" else (),
        "ignore_rows": draw(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0])),
        "prob_dtype": draw(st.sampled_from(FLOATS)),
        "prob_positive": draw(st.integers(0, 3)) > 0,
        "weight": draw(st.sampled_from(WEIGHTS if valid else WEIGHTS + BAD_WEIGHTS)),
        "ignore_index": ignore,
        "reduction": draw(GOOD_REDUCTION if valid or draw(st.booleans()) else BAD_REDUCTION),
        "label_smoothing": draw(GOOD_SMOOTHING if valid or draw(st.booleans())
                                else BAD_SMOOTHING),
        "num_threads": draw(GOOD_THREADS if valid else ANY_THREADS),
        "chunk_size": draw(st.sampled_from(GOOD_CHUNK if valid else GOOD_CHUNK + BAD_CHUNK)),
        "z_loss": draw(st.sampled_from(GOOD_Z_LOSS if valid else GOOD_Z_LOSS + BAD_Z_LOSS)),
        "softcap": draw(st.sampled_from(GOOD_SOFTCAP if valid else GOOD_SOFTCAP + BAD_SOFTCAP)),
        "return_z_loss": draw(st.sampled_from(GOOD_FLAG if valid else GOOD_FLAG + BAD_FLAG)),
        "return_token_accuracy": draw(st.sampled_from(GOOD_FLAG if valid
                                                      else GOOD_FLAG + BAD_FLAG)),
    }


def build_linear(case):
    def build(rng):
        x, x_mem = make_operand(case["x"], rng)
        w, w_mem = make_operand(case["w"], rng)
        x_shape = np.shape(x_mem) if x_mem is not None else ()
        w_shape = np.shape(w_mem) if w_mem is not None else ()
        v = w_shape[0] if w_shape else 1
        extra = tuple(w_shape[1:-1])
        logits_shape = tuple(x_shape[:-1]) + tuple(w_shape[:-1])
        bias = None
        if case["bias"] != "none":
            bias = rng.standard_normal(tuple(w_shape[:-1]))
            if case["bias"] == "wrong-shape":
                bias = bias.reshape(-1)[:-1] if bias.size else np.zeros(2)
            elif case["bias"] == "complex":
                bias = bias.astype(np.complex128)
        kind = case["target_kind"]
        positions = tuple(x_shape[:-1]) + extra
        if kind == "prob":
            target = np.abs(rng.standard_normal(logits_shape)) if case["prob_positive"] \
                else rng.standard_normal(logits_shape)
            target = target.astype(case["prob_dtype"])
        elif kind == "bool":
            target = np.zeros(positions, bool)
        elif kind == "object":
            target = np.zeros(positions, object)
        else:
            size = math.prod(positions)
            target = _labels(case, rng, size, v).reshape(positions)
            if kind == "list":
                target = target.tolist()
            elif kind == "wrong-shape":
                target = target.reshape(-1, 1)
        dtype = w_mem.dtype if w_mem is not None and w_mem.dtype.kind == "f" \
            else np.dtype("f8")
        weight = _weight(case["weight"], rng, v, dtype)
        kwargs = {
            "linear_bias": bias, "weight": weight, "ignore_index": case["ignore_index"],
            "reduction": case["reduction"], "label_smoothing": case["label_smoothing"],
            "num_threads": case["num_threads"], "chunk_size": case["chunk_size"],
        }
        for key, default in (("z_loss", 0.0), ("softcap", None), ("return_z_loss", False),
                             ("return_token_accuracy", False)):
            value = case[key]
            if not (type(value) is type(default) and value == default):
                kwargs[key] = value
        arrays = [a for a in (x, x_mem, w, w_mem, target, bias, weight)
                  if isinstance(a, np.ndarray)]
        return [x, w, target], kwargs, arrays, None

    return build


def linear_scales(fn_name, args, kwargs):
    """The error units of the results: the logits are bounded by L = max|x| max|W| D +
    max|b| (by the cap with ``softcap``); the loss and the logits' gradient as in
    ``test_fuzz.ce_scales`` plus the z-loss's terms; the three gradients are that gradient
    times the other factor's size and the number of terms summed."""
    x, w, y = _array(args[0]), _array(args[1]), _array(args[2])
    if x is None or w is None or x.ndim == 0 or w.ndim == 0:
        return 1.0
    b, cw = _array(kwargs["linear_bias"]), _array(kwargs["weight"])
    d, v, n = x.shape[-1], w.shape[0] if w.ndim else 1, x.shape[0] if x.ndim == 2 else 1
    with np.errstate(all="ignore"):
        logit = _finite_max(x) * _finite_max(w) * max(1, d) + (_finite_max(b) if b is not None
                                                                else 0.0)
        cap = kwargs.get("softcap")
        if isinstance(cap, float) and cap > 0:
            logit = min(logit, cap)
        classes = max(1, int(np.prod(w.shape[:-1])) // max(1, v)) * v
        wsum = float(np.nansum(np.abs(cw))) if cw is not None and cw.ndim == 1 else v
        ymax = _finite_max(y) if y is not None and y.dtype.kind == "f" and y.ndim > 1 else 1.0
        z = kwargs.get("z_loss", 0.0)
        z = z if isinstance(z, float) and math.isfinite(z) else 0.0
        lse = logit + math.log(max(2, classes)) + 1
        loss = (2 * logit * max(1.0, wsum) * ymax * classes + 4 * z * lse**2) * max(1, n)
        grad = max(1.0, wsum) * ymax + 2 * z * lse
        gx = grad * _finite_max(w) * classes
        gw = grad * _finite_max(x) * max(1, n)
        gb = grad * max(1, n)
    units = [min(u, 1e300) for u in (loss, gx, gw, gb)]
    if any(a is not None and a.dtype.kind in "fc" and np.isinf(a).any() for a in (cw, y)):
        units[0] = np.inf
    accuracy = np.inf if cap is not None else 1.0  # capped ties may fall either way
    flags = kwargs.get("return_z_loss") is True or kwargs.get("return_token_accuracy") is True
    if fn_name == "linear_cross_entropy":
        return (units[0], units[0], accuracy) if flags else units[0]
    return tuple(units) + ((units[0], accuracy) if flags else ())


@fuzz_settings(250)
@given(target=TARGET, case=linear_case(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_linear_cross_entropy(target, case, seed):
    check_call("linear_cross_entropy", case["name"], build_linear(case), LINEAR_TARGETS[target],
               seed, scales=linear_scales, twin=TWIN)


def test_layouts_cover_the_inputs():
    """The recipe's layouts are test_fuzz's (a rename there must not go unnoticed)."""
    assert {"C", "F", "strided", "byteswapped", "readonly"} <= set(LAYOUTS)
