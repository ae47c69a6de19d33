"""Fuzzing every public function against its NumPy twin (issue 6).

Hypothesis draws a *recipe* -- shapes, dtypes (every kind NumPy has), memory layouts, axes,
labels, weights, reductions, smoothing values, thread counts and ``out`` arrays, valid or not --
and the test builds the arguments from it twice: once for the function under test (the public
``csoftmax.<fn>`` or one compiled instruction-set variant, drawn too) and once for its twin
``csoftmax.slow.<fn>``.  The property:

* the call returns what the twin returns (same type, dtype and shape; values within a
  dtype-sized tolerance, NaN where the twin has NaN, the same infinities), or it raises
  ``TypeError``/``ValueError`` and the twin raises the same type;
* nothing else is raised, nothing crashes (a crash kills the run), and no ndarray argument is
  modified, except through ``out`` (an argument that shares memory with ``out`` must end up as
  the twin's does), and nothing at all when the call raises.

The tolerance is measured in units of the inputs' size (``*_scale``), and where the answer
itself is ill-conditioned -- a row sum lost to cancellation, an overflow decided by the last
bit -- the values are not compared; two correct implementations need not agree there.

About half the recipes are valid calls (so the kernels run), the rest break one or more rules.
Array values come from a NumPy generator seeded by the recipe (fast, and identical for both
calls); hypothesis shrinks the structure.

``CSOFTMAX_FUZZ_EXAMPLES=N`` sets the examples per test (by default 300, 250 and 400: the file
runs in about 10 s); ``tools/fuzz_long.sh`` runs >= 100,000 in total.
``CSOFTMAX_FUZZ_STATS=path`` appends one JSON line of outcome counts per test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
from arrays import FORCED_NUMPY, ArrayOnly, DLPackOnly
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import csoftmax
from csoftmax import _dispatch, _half, slow

#: casts of huge values (float64 -> float32, in the package and the twin alike) overflow
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# ---------------------------------------------------------------------------------------------
# what runs, how often

EXAMPLES = int(os.environ.get("CSOFTMAX_FUZZ_EXAMPLES", "0") or 0)
STATS_FILE = os.environ.get("CSOFTMAX_FUZZ_STATS")


def fuzz_settings(default):
    return settings(
        max_examples=EXAMPLES or default,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


class _Public:
    """The public functions, ``csoftmax.<fn>`` (the active backend)."""

    name = "public"

    def __getattr__(self, fn):
        return getattr(csoftmax, fn)


def _targets():
    targets = {"public": _Public()}
    if not FORCED_NUMPY and csoftmax.BACKEND == "cython":
        for path, frontend in _dispatch.cpu_frontends().items():
            targets[f"cython-{path}"] = frontend
    return targets


TARGETS = _targets()
TARGET = st.sampled_from(sorted(TARGETS))
TWIN = slow
STATS: dict[str, Counter] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_stats():
    yield
    if STATS_FILE:
        with open(STATS_FILE, "a") as f:
            for test, counts in STATS.items():
                f.write(json.dumps({"test": test, "pid": os.getpid(), **counts}) + "\n")


def _count(test, key):
    STATS.setdefault(test, Counter())[key] += 1


#: about 55% of the recipes are valid calls; the others may break any rule
VALID = st.integers(0, 19).map(lambda v: v < 11)

# ---------------------------------------------------------------------------------------------
# dtypes and values

try:  # bfloat16 where ml_dtypes gives NumPy one
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    ml_dtypes = BFLOAT16 = None

FLOATS = ["float16", "float32", "float64", "longdouble"] + (["bfloat16"] if BFLOAT16 else [])
INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
OTHERS = [
    "complex64", "complex128", "clongdouble", "object", "U6", "S6", "datetime64[ns]",
    "timedelta64[s]", "V8", "record",
]
GOOD_DTYPE = st.one_of(st.sampled_from(["float32", "float64"]), st.sampled_from(FLOATS),
                       st.sampled_from(INTS + ["bool"]))
ANY_DTYPE = st.one_of(GOOD_DTYPE, st.sampled_from(OTHERS))
#: special values for the softmax family; the functions that *sum products* (backward passes,
#: cross-entropy) get MODERATE_SPECIALS, without +-1.7e308: a double sum that overflows gives
#: inf, -inf or nan depending on the order of the additions, which no two correct
#: implementations need to share
MODERATE_SPECIALS = (np.nan, np.inf, -np.inf, -0.0, 0.0, 1e30, -1e30, 1e-40, -1e-310, 3e38,
                     -3e38, 88.7, 709.8, -745.0, -104.0)
SPECIALS = MODERATE_SPECIALS + (1.7e308, -1.7e308)


def _np_dtype(name):
    if name == "record":
        return np.dtype([("a", "f8"), ("b", "i4")])
    if name == "bfloat16":
        return BFLOAT16
    return np.dtype(name)


def _is_bf16(dtype):
    """bfloat16 (never without ml_dtypes: ``dtype == None`` would be True for float64)."""
    return BFLOAT16 is not None and dtype == BFLOAT16


def _is_float(dtype):
    """A real floating dtype, bfloat16 (ml_dtypes, kind "V") included."""
    return dtype.kind == "f" or _is_bf16(dtype)


def float_values(rng, shape, mode, scale):
    """float64 values: normal times ``scale``; special values sprinkled in in the modes
    ``"special"`` (SPECIALS) and ``"moderate"`` (MODERATE_SPECIALS)."""
    x = np.asarray(rng.standard_normal(shape) * scale)
    if mode in ("special", "moderate") and x.size:
        specials = SPECIALS if mode == "special" else MODERATE_SPECIALS
        pick = np.asarray(rng.random(shape) < rng.choice([0.05, 0.2, 0.6]))
        x[pick] = rng.choice(specials, size=int(pick.sum()))
        if rng.random() < 0.3:  # a whole row of one special value
            flat = x.reshape(-1, shape[-1]) if x.ndim else x.reshape(1, 1)
            flat[rng.integers(0, flat.shape[0])] = rng.choice(specials)
    elif mode == "constant":
        x[...] = rng.choice([0.0, 7.25, -3.5, 1e30])
    return x


def _int_values(rng, shape, dtype):
    info = np.iinfo(dtype)
    small = rng.integers(max(info.min, -50), min(info.max, 50), size=shape, endpoint=True)
    big = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return np.asarray(np.where(rng.random(shape) < 0.8, small, big).astype(dtype))


def typed_values(rng, shape, dtype, mode, scale):
    """An array of ``shape`` and ``dtype`` (of any kind) with values from ``rng``."""
    if dtype.kind in "iu":
        return _int_values(rng, shape, dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    x = float_values(rng, shape, mode, scale)
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype.kind in "fc" or _is_float(dtype):
            return np.asarray(x.astype(dtype))
        if dtype.kind == "O":
            return np.asarray(x.astype(object))
        if dtype.kind in "US":
            return np.asarray(np.round(x, 2).astype(dtype))
        if dtype.kind in "mM":
            return np.asarray(rng.integers(-(10**9), 10**9, size=shape).astype(dtype))
    return np.zeros(shape, dtype)  # void, records


# ---------------------------------------------------------------------------------------------
# layouts: the same values in other memory


def _strided(a):
    big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
    view = big[(Ellipsis, *(slice(1, None, 2) for _ in a.shape))]
    view[...] = a
    return view


def _negstride(a):
    flip = (Ellipsis, *(slice(None, None, -1) for _ in a.shape))
    return np.ascontiguousarray(a[flip])[flip]


def _unaligned(a):
    if a.dtype.itemsize < 2 or a.dtype.hasobject:
        return a
    buf = np.zeros(a.nbytes + 1, np.uint8)[1:]
    view = buf.view(a.dtype).reshape(a.shape)
    view[...] = a
    return view


def _byteswapped(a):
    if a.dtype.kind not in "iufc" or a.dtype.itemsize == 1:
        return a
    return a.astype(a.dtype.newbyteorder())


def _readonly(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


LAYOUTS = {
    "C": np.ascontiguousarray,
    "F": np.asfortranarray,
    "strided": _strided,
    "negstride": _negstride,
    "unaligned": _unaligned,
    "byteswapped": _byteswapped,
    "readonly": _readonly,
}
LAYOUT = st.one_of(st.just("C"), st.sampled_from(sorted(LAYOUTS)))


def present(a, container, layout):
    """``a`` as the caller hands it over: an ndarray in some layout, nested lists, an object
    with only ``__array__`` or only ``__dlpack__``, or a ragged nested list."""
    if container == "list":
        return a.tolist()
    if container == "arraylike":
        return ArrayOnly(LAYOUTS[layout](a))
    if container == "dlpack":
        return DLPackOnly(np.ascontiguousarray(a))
    if container == "ragged":
        return [[1.0, 2.0], [3.0]]
    return LAYOUTS[layout](a)


def dim_size():
    """Mostly tiny; sometimes past the 32-wide tile path and the 16-wide vector tails."""
    return st.one_of(st.integers(0, 5), st.integers(1, 40), st.integers(30, 130))


SHAPE = st.one_of(
    st.tuples(dim_size(), dim_size()),
    st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple),
    st.tuples(st.integers(1, 3), dim_size(), st.integers(1, 40)),
    st.tuples(st.integers(250, 400), st.integers(100, 160)),  # > 16384 elements: threads
)


@st.composite
def operand(draw, valid, shape=None, dtype=None, special="special"):
    """The recipe of one array operand (plain data; ``make_operand`` builds it)."""
    if valid:
        container = draw(st.sampled_from(["ndarray"] * 8 + ["list", "arraylike", "dlpack"]))
        scalar = None
    else:
        container = draw(st.sampled_from(["ndarray"] * 3 + ["list", "arraylike", "dlpack",
                                                            "ragged"]))
        scalar = draw(st.sampled_from([None] * 8 + ["py-float", "py-int", "np-scalar", "none",
                                                    "string", "complex"]))
    return {
        "shape": draw(SHAPE) if shape is None else shape,
        "dtype": draw(GOOD_DTYPE if valid else ANY_DTYPE) if dtype is None else dtype,
        "mode": draw(st.sampled_from(["normal", "normal", special, "constant"])),
        "scale": draw(st.sampled_from([1.0, 3.0, 30.0, 1e4, 1e-3])),
        "layout": draw(LAYOUT),
        "container": container,
        "scalar": scalar,
    }


def make_operand(spec, rng):
    """(value handed to the function, the ndarray whose memory is behind it, or None)."""
    kind = spec["scalar"]
    if kind is not None:
        return {
            "py-float": float(rng.standard_normal()),
            "py-int": int(rng.integers(-5, 5)),
            "np-scalar": np.float32(rng.standard_normal()),
            "none": None,
            "string": "1.0",
            "complex": 1 + 2j,
        }[kind], None
    a = typed_values(rng, spec["shape"], _np_dtype(spec["dtype"]), spec["mode"], spec["scale"])
    value = present(a, spec["container"], spec["layout"])
    if isinstance(value, (ArrayOnly, DLPackOnly)):
        return value, value._a
    return value, value if isinstance(value, np.ndarray) else None


BAD_AXES = [1.5, "0", [0], np.int8(-1), True, 2**70, -(2**70), (0, 0), (0, -1, 0)]


def axis_strategy(draw, valid, ndim):
    """An axis: for valid recipes one that fits ``ndim`` dimensions."""
    if valid:
        if ndim == 0:
            return draw(st.sampled_from([None, ()]))
        return draw(st.one_of(
            st.just(-1), st.none(), st.integers(-ndim, ndim - 1),
            st.sets(st.integers(0, ndim - 1), max_size=ndim).map(
                lambda s: tuple(a - ndim if a % 2 else a for a in s)),
            st.integers(-ndim, ndim - 1).map(np.int64),
        ))
    return draw(st.one_of(st.integers(-6, 5), st.sampled_from(BAD_AXES),
                          st.lists(st.integers(-5, 4), max_size=3).map(tuple)))


GOOD_THREADS = st.one_of(st.none(), st.sampled_from([1, 2, 3, 8]),
                         st.sampled_from([64, 10**9, 2**31, 2**63 - 1, np.int64(2), True]))
ANY_THREADS = st.one_of(GOOD_THREADS, st.sampled_from([0, -1, -(2**63), 2**64, 2**100, 2.0,
                                                       "2", np.float32(2), [2]]))
GOOD_OUTS = ["none", "none", "none", "fresh", "same", "overlap"]
BAD_OUTS = ["wrong-dtype", "wrong-shape", "fortran", "strided", "readonly", "list", "zero-d",
            "other-input"]


# ---------------------------------------------------------------------------------------------
# out= arrays


def _result_dtype(arrays):
    """The dtype a valid call returns for these inputs (None if one is not a valid array)."""
    result = None
    for a in arrays:
        if not isinstance(a, np.ndarray):
            return None
        if _is_float(a.dtype):
            r = a.dtype.newbyteorder("=")
        elif a.dtype.kind in "iub":
            r = np.dtype("f8")
        else:
            return None
        result = r if result is None else _half.promote(result, r)
    return result


def make_out(kind, inputs, rng):
    """An ``out`` of the given kind for ``inputs`` (out's shape is that of the first).

    Returns (out, inputs): "same" passes the first input itself, "other-input" the last one;
    "overlap" re-creates the first input in a buffer that ``out`` also covers, one or more
    elements before or after it."""
    first = inputs[0]
    if kind == "none":
        return None, inputs
    if kind == "list":
        return [0.0], inputs
    if not isinstance(first, np.ndarray):
        return np.zeros(3), inputs
    result = _result_dtype(inputs) or np.dtype("f8")
    shape = first.shape
    if kind == "fresh":
        return np.full(shape, np.nan, result), inputs
    if kind == "same":
        return first, inputs
    if kind == "other-input":
        return inputs[-1], inputs
    if kind == "overlap":
        if first.dtype != result or first.size == 0:
            return np.zeros(shape, result), inputs
        shift = int(rng.integers(1, first.size + 1))
        buf = np.full(first.size + shift, np.nan, result)
        lo, hi = buf[: first.size].reshape(shape), buf[shift:].reshape(shape)
        moved, out = (hi, lo) if rng.random() < 0.5 else (lo, hi)
        moved[...] = first
        return out, (moved, *inputs[1:])
    if kind == "wrong-dtype":
        return np.zeros(shape, "f4" if result == np.dtype("f8") else "f8"), inputs
    if kind == "wrong-shape":
        return np.zeros(shape + (1,), result), inputs
    if kind == "fortran":
        return np.zeros(shape, result, order="F"), inputs
    if kind == "strided":
        return _strided(np.zeros(shape, result)), inputs
    if kind == "readonly":
        return _readonly(np.zeros(shape, result)), inputs
    if kind == "zero-d":
        return np.zeros((), result), inputs
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------
# running and comparing


def _outcome(fn, args, kwargs):
    try:
        return "ok", fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        return type(exc), exc


def _tolerance(dtype):
    """Relative tolerance between the kernels and the twin, by result dtype."""
    dtype = np.dtype(dtype)
    if dtype.itemsize >= 8:
        return 1e-11
    if dtype.itemsize == 4:
        return 2e-5
    if _is_bf16(dtype):  # 8 significant bits: one rounding step apart
        return 1.6e-2
    return 4e-3


def _finite_max(*arrays):
    """max(1, largest finite |value|) over arrays (or scalars)."""
    m = 1.0
    for a in arrays:
        a = np.abs(np.asarray(a, dtype=np.float64))
        m = max(m, float(np.max(a, initial=0.0, where=np.isfinite(a))))
    return m


def assert_agree(actual, expected, what, scale=1.0):
    """``actual`` (under test) vs ``expected`` (the twin): type, dtype, shape, then values:
    |a - e| <= tol * (scale + |e|), NaN where NaN, the same infinities -- an infinity against
    a finite value beyond a quarter of the dtype's maximum counts as the same overflow, and so
    does any infinity where the error allowed exceeds that quarter.  ``scale`` may be an
    array (per element); an infinite scale means "not comparable"."""
    assert type(actual) is type(expected), f"{what}: type {type(actual)} vs {type(expected)}"
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} vs {e.dtype}"
    assert a.shape == e.shape, f"{what}: shape {a.shape} vs {e.shape}"
    if not _is_float(a.dtype):
        assert np.array_equal(a, e), f"{what}: values differ"
        return
    tol = _tolerance(a.dtype)
    big = float((ml_dtypes.finfo if _is_bf16(a.dtype) else np.finfo)(a.dtype).max) / 4
    with np.errstate(all="ignore"):
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        nan_a, nan_e = np.isnan(a64), np.isnan(e64)
        both_big = (np.abs(a64) > big) & (np.abs(e64) > big) & (np.sign(a64) == np.sign(e64))
        close = (a64 == e64) | both_big | (np.abs(a64 - e64) <= tol * (scale + np.abs(e64)))
        close |= np.isinf(scale)
        # an error unit beyond the dtype's range: whether a value overflows is not determined
        # (float16 results of float32 arithmetic on values near 3e38, for instance)
        close |= (np.isinf(a64) | np.isinf(e64)) & (tol * np.asarray(scale) >= big)
    bad = ~close & ~(nan_a & nan_e)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        unit = float(np.broadcast_to(scale, a.shape)[idx])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} values differ (tolerance {tol:g} x "
            f"(scale {unit:g} + |twin|)); first at {idx}: got {a[idx]!r}, twin {e[idx]!r}"
        )


def check_call(test, fn_name, build, target, seed, scales=None, known_bug=None, twin=None):
    """Build the arguments twice, call ``target`` and the twin, compare (see the module doc).

    ``scales(fn_name, args, kwargs)`` gives the absolute-error unit(s) of the result (a tuple for a
    tuple result); ``known_bug`` names a reported package bug this recipe can hit: then only
    a differing outcome or value is let through (counted), every other check still runs.
    ``twin``: the reference's functions (default ``csoftmax.slow``)."""
    args, kwargs, arrays, out = build(np.random.default_rng(seed))
    targs, tkwargs, tarrays, _ = build(np.random.default_rng(seed))
    before = [np.array(a, copy=True) for a in arrays]
    # the error units come from the inputs as they are before the calls (out= may be one)
    units = scales(fn_name, targs, tkwargs) if scales else 1.0
    got = _outcome(getattr(target, fn_name), args, kwargs)
    want = _outcome(getattr(twin or TWIN, fn_name), targs, tkwargs)
    _count(test, "examples")
    _count(test, f"{fn_name}:{'ok' if got[0] == 'ok' else got[0].__name__}")
    shared = [got[0] == "ok" and isinstance(out, np.ndarray) and np.may_share_memory(a, out)
              for a in arrays]
    for i, (a, copy) in enumerate(zip(arrays, before)):
        if not shared[i]:
            assert a.dtype == copy.dtype and a.tobytes() == copy.tobytes(), (
                f"{fn_name}: argument {i} ({a.dtype}{a.shape}) was modified "
                f"({'after raising ' + repr(got[1]) if got[0] != 'ok' else 'not out'})"
            )
    if known_bug and (got[0] != want[0] or got[0] == "ok"):
        _count(test, f"known-bug:{known_bug}")
        return
    assert got[0] == want[0], (
        f"{fn_name}: {target.name} gave {got[0] if got[0] == 'ok' else repr(got[1])}, "
        f"the twin {want[0] if want[0] == 'ok' else repr(want[1])}"
    )
    if got[0] != "ok":
        return
    out_unit = units[-1] if isinstance(units, tuple) else units
    if isinstance(units, tuple) and fn_name == "cross_entropy_with_grad":
        out_unit = units[1]  # the gradient's (before a named tuple's z-loss and accuracy)
    for i, (a, ta) in enumerate(zip(arrays, tarrays)):
        if shared[i] and _is_float(a.dtype):  # written through out: as the twin's
            try:
                unit = np.broadcast_to(out_unit, a.shape)
            except ValueError:
                unit = 1.0
            assert_agree(a, ta, f"{fn_name}: argument {i}, which shares memory with out", unit)
    result, expected = got[1], want[1]
    if out is not None:
        returned = result[1] if fn_name == "cross_entropy_with_grad" else result
        assert returned is out, f"{fn_name}: out was not returned"
    if isinstance(result, tuple):
        assert isinstance(expected, tuple) and len(result) == len(expected)
        if not isinstance(units, tuple):
            units = (units,) * len(result)
        for i, (r, e, s) in enumerate(zip(result, expected, units)):
            assert_agree(r, e, f"{fn_name} ({target.name}) [{i}]", s)
    else:
        if isinstance(result, np.ndarray):
            assert result.flags.c_contiguous, f"{fn_name}: result not C-contiguous"
        unit = units[0] if isinstance(units, tuple) else units
        assert_agree(result, expected, f"{fn_name} ({target.name})", unit)


def _array(v):
    """The values of an operand as float64 (for error units), or None."""
    if isinstance(v, (ArrayOnly, DLPackOnly)):
        v = v._a
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp


@st.composite
def rowwise_case(draw):
    valid = draw(VALID)
    name = draw(st.sampled_from(["softmax", "log_softmax", "logsumexp"]))
    x = draw(operand(valid))
    outs = GOOD_OUTS if valid else GOOD_OUTS + BAD_OUTS[:-1]
    return {
        "valid": valid,
        "name": name,
        "x": x,
        "axis": axis_strategy(draw, valid, len(x["shape"])),
        "axis_positional": draw(st.booleans()),
        "num_threads": draw(GOOD_THREADS if valid else ANY_THREADS),
        "out": draw(st.sampled_from(outs)) if name != "logsumexp" else "none",
        "bad_keyword": not valid and draw(st.integers(0, 9)) == 0,
        # logsumexp's SciPy options
        "keepdims": draw(st.booleans() if valid else st.sampled_from([False, True, 1, "no"])),
        "b": draw(st.sampled_from(B_KINDS if valid else B_KINDS + BAD_B_KINDS))
        if name == "logsumexp" else "none",
        "return_sign": draw(st.booleans()),
        "where": draw(st.sampled_from(WHERE_KINDS if valid else WHERE_KINDS + BAD_WHERE_KINDS)),
    }


#: masks (where=): none, the input's shape, broadcast along the last axis or the leading
#: ones, nothing kept, everything kept, a 0-d bool; bad: a wrong shape, not bool
WHERE_KINDS = ["none"] * 5 + ["full", "last-axis", "leading", "all-false", "all-true", "scalar"]
BAD_WHERE_KINDS = ["wrong-shape", "int"]


def make_where(kind, x, rng):
    """A ``where=`` mask for an input like ``x``."""
    shape = np.shape(x) if isinstance(x, np.ndarray) else ()
    if kind == "full":
        return rng.random(shape) < 0.7
    if kind == "last-axis":
        return rng.random(shape[-1:]) < 0.7
    if kind == "leading":
        return rng.random(shape[:1] + (1,) * max(0, len(shape) - 1)) < 0.7
    if kind == "all-false":
        return np.zeros(shape, bool)
    if kind == "all-true":
        return np.ones(shape, bool)
    if kind == "scalar":
        return np.bool_(rng.random() < 0.5)
    if kind == "wrong-shape":
        return np.ones(shape + (2,), bool)
    if kind == "int":
        return np.ones(shape, np.int64)
    raise AssertionError(kind)


B_KINDS = ["none"] * 4 + ["positive", "mixed-sign", "zeros", "nan", "last-axis", "int", "scalar"]
BAD_B_KINDS = ["wrong-shape", "complex", "list"]


def make_b(kind, x, rng):
    """logsumexp's ``b`` for an input like ``x``."""
    shape = np.shape(x) if isinstance(x, np.ndarray) else ()
    if kind == "positive":
        return rng.uniform(0.1, 2.0, size=shape)
    if kind == "mixed-sign":
        return rng.standard_normal(shape)
    if kind == "zeros":
        return (rng.random(shape) < 0.5).astype(np.float64)
    if kind == "nan":
        b = rng.uniform(0.1, 2.0, size=shape)
        b.reshape(-1)[: max(1, b.size // 7)] = np.nan
        return b
    if kind == "last-axis":
        return rng.uniform(-1.0, 2.0, size=shape[-1:])
    if kind == "int":
        return rng.integers(-2, 3, size=shape)
    if kind == "scalar":
        return 2.5
    if kind == "wrong-shape":
        return np.ones(shape + (2,))
    if kind == "complex":
        return np.ones(shape, np.complex128)
    if kind == "list":
        return np.ones(shape).tolist()
    raise AssertionError(kind)


def build_rowwise(case):
    def build(rng):
        x, behind = make_operand(case["x"], rng)
        out, (x,) = make_out(case["out"], (x,), rng)
        args, kwargs = [x], {"num_threads": case["num_threads"]}
        if case["axis_positional"]:
            args.append(case["axis"])
        else:
            kwargs["axis"] = case["axis"]
        if case["out"] != "none":
            kwargs["out"] = out
        if case["bad_keyword"]:
            kwargs["dim"] = 1
        b = None
        if case["name"] == "logsumexp":
            if case["keepdims"]:
                kwargs["keepdims"] = case["keepdims"]
            if case["return_sign"]:
                kwargs["return_sign"] = True
            if case["b"] != "none":
                kwargs["b"] = b = make_b(case["b"], x, rng)
        where = None
        if case["where"] != "none":
            kwargs["where"] = where = make_where(case["where"], x, rng)
        arrays = [a for a in (x, behind, b, where) if isinstance(a, np.ndarray)]
        return args, kwargs, arrays, kwargs.get("out")

    return build


def rowwise_scale(fn_name, args, kwargs):
    """The size of the inputs; for logsumexp with mixed-sign ``b``, rows whose sum of
    ``b exp(x)`` nearly cancels are not compared (the log of a cancellation error)."""
    x = _array(args[0])
    if x is None:
        return 1.0
    unit = _finite_max(x)
    b = _array(kwargs.get("b"))
    if b is None or not np.any(b < 0):
        return unit
    axis = kwargs.get("axis", args[1] if len(args) > 1 else -1)
    axes = axis if axis is None or isinstance(axis, tuple) else (axis,)
    try:
        x, b = np.broadcast_arrays(x, b)
        with np.errstate(all="ignore"):
            live = np.where(b != 0, x, -np.inf)
            m = np.max(live, axis=axes, keepdims=True, initial=-np.inf)
            t = b * np.exp(live - np.where(np.isfinite(m), m, 0))
            total = np.abs(np.sum(t, axis=axes, keepdims=True))
            size = np.sum(np.abs(t), axis=axes, keepdims=True)
            ill = ~(total > 1e-3 * size) & (size > 0) & ~np.isnan(size)
        units = np.where(ill, np.inf, unit)
        if not kwargs.get("keepdims"):
            units = np.squeeze(units, axis=axes if axes is not None else None)
        return units
    except (TypeError, ValueError, IndexError, OverflowError):
        return unit


@fuzz_settings(300)
@given(target=TARGET, case=rowwise_case(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_softmax_family(target, case, seed):
    check_call("softmax_family", case["name"], build_rowwise(case), TARGETS[target], seed,
               scales=rowwise_scale)


# ---------------------------------------------------------------------------------------------
# softmax_backward, log_softmax_backward


@st.composite
def backward_case(draw):
    valid = draw(VALID)
    g = draw(operand(valid, special="moderate"))
    a = draw(operand(valid, shape=g["shape"], special="moderate"))
    if not valid and draw(st.integers(0, 4)) == 0:
        a["shape"] = draw(SHAPE)  # mismatched shapes
    if draw(st.booleans()):  # often the same dtype: no promotion copy, so out= runs direct
        a["dtype"] = g["dtype"]
    outs = GOOD_OUTS + ["other-input"] if valid else GOOD_OUTS + BAD_OUTS
    return {
        "valid": valid,
        "name": draw(st.sampled_from(["softmax_backward", "log_softmax_backward"])),
        "g": g,
        "a": a,
        "a_is_g": draw(st.integers(0, 9)) == 0,
        "a_values": draw(st.sampled_from(["raw", "probabilities", "probabilities"])),
        "axis": axis_strategy(draw, valid, len(g["shape"])),
        "num_threads": draw(GOOD_THREADS if valid else ANY_THREADS),
        "out": draw(st.sampled_from(outs)),
    }


def build_backward(case):
    def build(rng):
        g, g_behind = make_operand(case["g"], rng)
        a, a_behind = make_operand(case["a"], rng)
        if (case["a_values"] == "probabilities" and isinstance(a, np.ndarray)
                and _is_float(a.dtype)):
            with np.errstate(all="ignore"):
                p = np.abs(a.astype(np.float64))
                p = p / max(1.0, float(np.nansum(p)))
                if case["name"] == "log_softmax_backward":
                    p = np.log(p)
            a = a_behind = LAYOUTS[case["a"]["layout"]](p.astype(a.dtype))
        if case["a_is_g"]:
            a, a_behind = g, g_behind
        out, (g, a) = make_out(case["out"], (g, a), rng)
        kwargs = {"axis": case["axis"], "num_threads": case["num_threads"]}
        if case["out"] != "none":
            kwargs["out"] = out
        arrays = [v for v in (g, a, g_behind, a_behind) if isinstance(v, np.ndarray)]
        return [g, a], kwargs, arrays, kwargs.get("out")

    return build


def _row_length(shape, axis):
    """Elements per row (the reduced axes) of a valid call; all elements otherwise."""
    axes = range(len(shape)) if axis is None else axis if isinstance(axis, tuple) else (axis,)
    try:
        return max(1, int(np.prod([shape[int(a)] for a in axes])))
    except (IndexError, TypeError, ValueError, OverflowError):
        return max(1, int(np.prod(shape)))


def _ill_conditioned_rows(terms, axis):
    """Where the row sum of ``terms`` (float64) is lost to cancellation -- its rounding error
    can exceed the sum itself, so its sign and whether it is zero depend on the order of the
    additions -- broadcast to ``terms``' shape; None when ``axis`` is not valid."""
    axes = axis if axis is None or isinstance(axis, tuple) else (axis,)
    try:
        with np.errstate(all="ignore"):
            total = np.abs(np.sum(terms, axis=axes, keepdims=True))
            size = np.sum(np.abs(terms), axis=axes, keepdims=True)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    with np.errstate(all="ignore"):
        ill = ~(total > 1e-13 * size) & (size > 0)  # NaN sums are not "ill": NaN both ways
    return np.broadcast_to(ill & ~np.isnan(total), terms.shape)


def backward_scale(fn_name, args, kwargs):
    """|error| of a (g - <g, a>) or g - exp(o) sum(g): the cancellation is in the sums.
    Rows whose sum is lost to cancellation are not compared (an infinite unit): a large
    exp(o) times a sum that is 0 in one order of additions and 1e14 in another gives NaN
    or inf there, and both are right."""
    g, a = _array(args[0]), _array(args[1])
    if g is None or a is None or g.shape != a.shape:
        return 1.0
    n = _row_length(a.shape, kwargs.get("axis"))
    with np.errstate(all="ignore"):
        amax = _finite_max(np.exp(np.clip(a, -800, 700)), a)
        terms = g * a if fn_name == "softmax_backward" else g
    unit = float(min(np.finfo(np.float64).max, amax * _finite_max(g) * n))
    ill = _ill_conditioned_rows(terms, kwargs.get("axis"))
    return unit if ill is None else np.where(ill, np.inf, unit)


@fuzz_settings(250)
@given(target=TARGET, case=backward_case(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_backward(target, case, seed):
    check_call("backward", case["name"], build_backward(case), TARGETS[target], seed,
               scales=backward_scale)


# ---------------------------------------------------------------------------------------------
# cross_entropy, cross_entropy_with_grad

GOOD_IGNORE = st.one_of(st.just(-100), st.integers(-3, 8), st.sampled_from(
    [-(2**63), 2**63 - 1, np.int32(-100), np.uint64(2**63 + 5), np.int8(-1), True]))
BAD_IGNORE = st.sampled_from([2**63, -(2**63) - 1, 2**64, 1.5, "x", None, np.float64(-100)])
GOOD_REDUCTION = st.sampled_from(["mean", "sum", "none"])
BAD_REDUCTION = st.sampled_from(["avg", "MEAN", None, 0, "", b"mean", ["mean"]])
GOOD_SMOOTHING = st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.sampled_from(
    [1.0, 1, 0, np.float32(0.25), np.float16(0.5), np.float64(1e-300), 5e-324]))
BAD_SMOOTHING = st.sampled_from([-1e-12, -0.1, 1.0 + 1e-12, 1.5, np.nan, np.inf, -np.inf, None,
                                 "x", [0.1], 1 + 0j, np.array([0.1, 0.2]), 10**400, -(10**400)])
LABEL_EDGES = ("C", "C+1", "-1", "ignore", "min", "max", "-100")
WEIGHTS = ["none"] * 5 + ["ok", "ok", "negative", "zero", "int", "float16", "list", "nan", "inf"]
BAD_WEIGHTS = ["wrong-length", "complex", "2d", "object"]


@st.composite
def ce_case(draw):
    valid = draw(VALID)
    if valid:
        shape = draw(st.one_of(
            st.tuples(dim_size(), st.integers(1, 130)),
            st.tuples(st.integers(0, 400), st.integers(1, 8)),  # many tiles of short rows
            st.tuples(st.integers(250, 400), st.integers(100, 130)),  # threads by default
            st.tuples(st.integers(1, 130)),
        ))
    else:
        shape = draw(st.one_of(st.tuples(dim_size(), dim_size()), st.tuples(dim_size()),
                               st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)))
    target_kinds = ["index"] * 6 + ["prob"] * 3 + ["list"]
    if not valid:
        target_kinds += ["scalar", "bool", "wrong-shape", "object", "dlpack", "edges"]
    ignore = draw(GOOD_IGNORE if valid or draw(st.booleans()) else BAD_IGNORE)
    kind = draw(st.sampled_from(target_kinds))
    if valid and kind == "prob" and int(ignore) >= 0:
        ignore = -100
    outs = ["none", "none", "none", "fresh", "same", "overlap"]
    if not valid:
        outs += BAD_OUTS[:-1] + ["overlap-target", "overlap-weight"]
    return {
        "valid": valid,
        "name": draw(st.sampled_from(["cross_entropy", "cross_entropy_with_grad"])),
        "logits": draw(operand(valid, shape=shape, special="moderate")),
        "target_kind": kind,
        "label_dtype": draw(st.one_of(st.sampled_from(["int64", "int32"]),
                                      st.sampled_from(INTS))),
        "label_edges": tuple(draw(st.lists(st.sampled_from(LABEL_EDGES), max_size=3)))
        if kind == "edges" else (),
        "ignore_rows": draw(st.sampled_from([0.0, 0.0, 0.25, 1.0])),
        "prob": draw(operand(valid, special="moderate", dtype=draw(
            st.sampled_from(FLOATS) if valid else st.sampled_from(FLOATS + ["int64", "bool"])))),
        "prob_positive": draw(st.integers(0, 3)) > 0,
        "weight": draw(st.sampled_from(WEIGHTS if valid else WEIGHTS + BAD_WEIGHTS)),
        "ignore_index": ignore,
        "reduction": draw(GOOD_REDUCTION if valid or draw(st.booleans()) else BAD_REDUCTION),
        "label_smoothing": draw(GOOD_SMOOTHING if valid or draw(st.booleans())
                                else BAD_SMOOTHING),
        "num_threads": draw(GOOD_THREADS if valid else ANY_THREADS),
        "out": draw(st.sampled_from(outs)),
        # z-loss and logit soft-capping (0.2)
        "z_loss": draw(st.sampled_from(GOOD_Z_LOSS if valid else GOOD_Z_LOSS + BAD_Z_LOSS)),
        "softcap": draw(st.sampled_from(GOOD_SOFTCAP if valid else GOOD_SOFTCAP + BAD_SOFTCAP)),
    }


GOOD_Z_LOSS = [0.0] * 4 + [1e-3, 0.05]
BAD_Z_LOSS = [-1.0, float("nan"), float("inf"), "0.1"]
GOOD_SOFTCAP = [None] * 4 + [30.0, 3.0]
BAD_SOFTCAP = [0.0, -1.0, float("inf"), "30"]


def _labels(case, rng, n, c):
    """Class indices of the case's dtype: valid ones, ignored rows, and the edge values."""
    dtype = np.dtype(case["label_dtype"])
    info = np.iinfo(dtype)
    ii = case["ignore_index"]
    y = rng.integers(0, max(c, 1), size=n).astype(object)
    if n and case["ignore_rows"]:
        y[rng.random(n) < case["ignore_rows"]] = ii
    edges = {"C": c, "C+1": c + 1, "-1": -1, "ignore": ii, "min": int(info.min),
             "max": int(info.max), "-100": -100}
    for e in case["label_edges"]:
        if n:
            y[int(rng.integers(0, n))] = edges[e]
    fits = [isinstance(v, (int, np.integer)) and info.min <= int(v) <= info.max for v in y]
    return np.array([int(v) if ok else 0 for v, ok in zip(y, fits)], dtype=dtype)


def _weight(kind, rng, c, dtype):
    if kind == "none":
        return None
    w = rng.uniform(0.25, 2.0, size=c)
    if kind == "nan" and c:
        w[rng.integers(0, c)] = np.nan
    elif kind == "inf" and c:
        w[rng.integers(0, c)] = np.inf
    elif kind == "negative":
        w = w - 1.0
    elif kind == "zero":
        w[:] = 0.0
    elif kind == "wrong-length":
        return rng.uniform(0.5, 1.5, size=c + 1)
    elif kind == "int":
        return rng.integers(0, 3, size=c)
    elif kind == "float16":
        return w.astype(np.float16)
    elif kind == "complex":
        return w.astype(np.complex128)
    elif kind == "2d":
        return w[None, :]
    elif kind == "object":
        return w.astype(object)
    elif kind == "list":
        return w.tolist()
    return w.astype(dtype if _is_float(dtype) else np.float64)


def _overlapping(out_shape, result, other):
    """(out, a copy of ``other`` placed inside out's memory)."""
    size = int(np.prod(out_shape))
    buf = np.zeros(size + other.size + 1, result)
    out = buf[:size].reshape(out_shape)
    start = max(0, size - 1)
    view = buf[start: start + other.size].reshape(other.shape)
    view[...] = other
    return out, view


def build_ce(case):
    def build(rng):
        logits, behind = make_operand(case["logits"], rng)
        shape = np.shape(behind) if behind is not None else ()
        n, c = shape if len(shape) == 2 else (1, shape[0]) if len(shape) == 1 else (0, 0)
        kind = case["target_kind"]
        if kind == "prob":
            target, _ = make_operand(dict(case["prob"], shape=shape), rng)
            if (isinstance(target, np.ndarray) and _is_float(target.dtype)
                    and case["prob_positive"]):
                with np.errstate(all="ignore"):
                    target = LAYOUTS[case["prob"]["layout"]](np.abs(target))
        elif kind == "bool":
            target = np.zeros(n, bool)
        elif kind == "object":
            target = np.zeros(n, object)
        else:
            target = _labels(case, rng, n, c)
            if len(shape) == 1:
                target = target.reshape(())
            if kind == "list":
                target = target.tolist()
            elif kind == "scalar":
                target = int(target.reshape(-1)[0]) if target.size else 0
            elif kind == "dlpack" and target.dtype.kind != "u":
                target = DLPackOnly(np.ascontiguousarray(target))
            elif kind == "wrong-shape":
                target = target.reshape(-1, 1)
        weight = _weight(case["weight"], rng, c, behind.dtype if behind is not None
                         else np.dtype("f8"))
        okind = case["out"]
        if okind in ("overlap-target", "overlap-weight"):
            other = target if okind == "overlap-target" else weight
            if (isinstance(logits, np.ndarray) and isinstance(other, np.ndarray)
                    and _is_float(other.dtype)):
                out, other = _overlapping(logits.shape, _result_dtype([logits]) or
                                          np.dtype("f8"), other)
                if okind == "overlap-target":
                    target = other
                else:
                    weight = other
            else:
                out, _ = make_out("fresh", (logits,), rng)
        else:
            out, (logits,) = make_out(okind, (logits,), rng)
        kwargs = {
            "weight": weight, "ignore_index": case["ignore_index"],
            "reduction": case["reduction"], "label_smoothing": case["label_smoothing"],
            "num_threads": case["num_threads"],
        }
        if case["z_loss"] != 0.0:
            kwargs["z_loss"] = case["z_loss"]
        if case["softcap"] is not None:
            kwargs["softcap"] = case["softcap"]
        if case["name"] == "cross_entropy_with_grad" and okind != "none":
            kwargs["out"] = out
        arrays = [v for v in (logits, behind, target, weight) if isinstance(v, np.ndarray)]
        return [logits, target], kwargs, arrays, kwargs.get("out")

    return build


def ce_scales(fn_name, args, kwargs):
    """(loss unit, gradient unit): the loss adds, per row, terms of the size of the logits
    (shifted by the row's max) times the weights and the targets.  An infinite class weight or
    probability target makes the loss inf or NaN by rounding alone (inf * log(s), where
    s = 1 + tiny terms rounds to exactly 1 in one order of addition -- or with float32 partial
    sums -- and not in another): the loss is then not compared."""
    x, y, w = _array(args[0]), _array(args[1]), _array(kwargs["weight"])
    if x is None:
        return 1.0, 1.0
    n = x.shape[0] if x.ndim == 2 else 1
    c = x.shape[-1] if x.ndim else 1
    with np.errstate(all="ignore"):
        wsum = float(np.nansum(np.abs(w))) if w is not None and w.ndim == 1 else c
        ymax = _finite_max(y) if y is not None and _is_float(y.dtype) and y.ndim == x.ndim \
            else 1.0
        loss = 2 * _finite_max(x) * max(1.0, wsum) * ymax * c * max(1, n)
        grad = max(1.0, wsum) * ymax
    if any(v is not None and (v.dtype.kind in "fc" or _is_float(v.dtype)) and np.isinf(v).any()
           for v in (w, y)):
        # with a soft cap an infinite gradient term meets the chain factor 1 - tanh^2 of
        # saturated logits: 0 or a few ulp by the tanh's last bit (the twin's np.tanh is not
        # the kernels'), so inf * 0 = NaN in one and inf in the other: not comparable
        return np.inf, np.inf if kwargs.get("softcap") else min(grad, 1e300)
    return min(loss, 1e300), min(grad, 1e300)


@fuzz_settings(400)
@given(target=TARGET, case=ce_case(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_cross_entropy(target, case, seed):
    check_call("cross_entropy", case["name"], build_ce(case), TARGETS[target], seed,
               scales=ce_scales)


# ---------------------------------------------------------------------------------------------
# cross-entropy over any class axis (axis=): N-D logits, targets of the other axes' shape
# (class indices) or of the logits' shape (probabilities), "none" of the targets' shape

BAD_CE_AXES = [1.5, "1", None, (0,), [1], 2**70]


@st.composite
def ce_axis_case(draw):
    valid = draw(VALID)
    ndim = draw(st.integers(1, 4))
    shape = list(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    ax = draw(st.integers(0, ndim - 1))
    shape[ax] = draw(st.one_of(st.integers(1, 40), st.integers(100, 300)))
    if draw(st.integers(0, 4)) == 0:  # a longer last axis (strided blocks, threads)
        shape[-1] = draw(st.integers(60, 400)) if ax != ndim - 1 else shape[-1]
    if valid:
        axis = draw(st.sampled_from([ax, ax - ndim, np.int64(ax), np.int32(ax - ndim)]))
    else:
        axis = draw(st.sampled_from([ax, ax - ndim, ndim, -ndim - 1] + BAD_CE_AXES))
    kinds = ["index"] * 5 + ["prob"] * 2
    if not valid:
        kinds += ["2d-rows", "wrong-shape", "axis-kept"]
    logits = draw(operand(True, shape=tuple(shape), special="moderate",
                          dtype=draw(st.sampled_from(["float32", "float64", "float16", "int64"]))))
    if 0 in shape:  # a nested list would lose the empty axes' shape
        logits["container"] = "ndarray"
    return {
        "valid": valid,
        "name": draw(st.sampled_from(["cross_entropy", "cross_entropy_with_grad"])),
        "logits": logits,
        "class_axis": ax,
        "axis": axis,
        "target_kind": draw(st.sampled_from(kinds)),
        "ignore_rows": draw(st.sampled_from([0.0, 0.25, 1.0])),
        "prob_scale": draw(st.sampled_from([1.0, 3.0])),
        "weight": draw(st.sampled_from(["none", "none", "ok", "zero"])),
        "reduction": draw(GOOD_REDUCTION),
        "label_smoothing": draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])),
        "num_threads": draw(st.sampled_from([None, 1, 2, 3])),
        "out": draw(st.sampled_from(["none", "none", "fresh", "same"])),
        "z_loss": draw(st.sampled_from(GOOD_Z_LOSS)),
        "softcap": draw(st.sampled_from(GOOD_SOFTCAP)),
        "flags": draw(st.sampled_from(["none", "none", "z", "acc", "both"])),
    }


def build_ce_axis(case):
    def build(rng):
        logits, behind = make_operand(case["logits"], rng)
        arr = np.asarray(behind if behind is not None else logits)
        shape = arr.shape
        ax = case["class_axis"]
        c = shape[ax]
        pos = shape[:ax] + shape[ax + 1:]
        kind = case["target_kind"]
        if kind == "prob":
            target = np.abs(rng.standard_normal(shape)) * case["prob_scale"]
            target = target.astype(arr.dtype if arr.dtype.kind == "f" else np.float64)
            if rng.random() < 0.3:
                target = np.moveaxis(np.moveaxis(target, ax, -1).copy(), -1, ax)  # strided
        else:
            target = rng.integers(0, c, size=pos)
            if case["ignore_rows"]:
                target[rng.random(pos) < case["ignore_rows"]] = -100
            if kind == "2d-rows":  # the 2-D convention: one label per leading row
                target = target.reshape(-1)[: shape[0]] if target.size else target.reshape(-1)
            elif kind == "wrong-shape":
                target = target[..., None]
            elif kind == "axis-kept":
                target = np.expand_dims(target, ax)
        weight = _weight(case["weight"], rng, c, arr.dtype if arr.dtype.kind == "f"
                         else np.dtype("f8"))
        okind = case["out"]
        out, (logits,) = make_out(okind, (logits,), rng)
        kwargs = {"axis": case["axis"], "weight": weight, "reduction": case["reduction"],
                  "label_smoothing": case["label_smoothing"],
                  "num_threads": case["num_threads"]}
        if case["z_loss"] != 0.0:
            kwargs["z_loss"] = case["z_loss"]
        if case["softcap"] is not None:
            kwargs["softcap"] = case["softcap"]
        if case["flags"] in ("z", "both"):
            kwargs["return_z_loss"] = True
        if case["flags"] in ("acc", "both") and kind != "prob":
            kwargs["return_token_accuracy"] = True
        if case["name"] == "cross_entropy_with_grad" and okind != "none":
            kwargs["out"] = out
        arrays = [v for v in (logits, behind, target, weight) if isinstance(v, np.ndarray)]
        return [logits, target], kwargs, arrays, kwargs.get("out")

    return build


def ce_axis_scales(fn_name, args, kwargs):
    """As ce_scales, over the positions of N-D logits (the class axis ``axis``); one unit
    per part of a named tuple (loss, [grad,] z-loss, accuracy)."""
    x, y, w = _array(args[0]), _array(args[1]), _array(kwargs["weight"])
    if x is None or x.ndim == 0:
        return 1.0, 1.0
    try:
        c = x.shape[int(kwargs["axis"])]
    except (TypeError, ValueError, IndexError):
        return 1.0, 1.0
    npos = x.size // max(c, 1)
    with np.errstate(all="ignore"):
        wsum = float(np.nansum(np.abs(w))) if w is not None and w.ndim == 1 else c
        ymax = _finite_max(y) if y is not None and y.dtype.kind == "f" and y.ndim == x.ndim \
            else 1.0
        xmax = _finite_max(x)
        cap = kwargs.get("softcap")
        xmax = min(xmax, cap) if cap else xmax
        loss = 2 * xmax * max(1.0, wsum) * ymax * c * max(1, npos)
        grad = max(1.0, wsum) * ymax
        zunit = 4 * max(kwargs.get("z_loss", 0.0), 1e-300) * (xmax + np.log(c)) ** 2
    units = [min(loss + zunit, 1e300)]
    if fn_name == "cross_entropy_with_grad":
        units.append(min(grad * (1 + zunit), 1e300))
    if kwargs.get("return_z_loss"):
        units.append(min(zunit, 1e300))
    if kwargs.get("return_token_accuracy"):
        # with a soft cap, large logits saturate to ties at +-cap whose bits are the
        # tanh's rounding (the twin's np.tanh is not the kernels'): not comparable
        units.append(np.inf if cap else 1.0)
    if fn_name == "cross_entropy_with_grad" and len(units) == 2:
        return tuple(units)
    return tuple(units) if len(units) > 1 else (units[0], units[0])


@fuzz_settings(200)
@given(target=TARGET, case=ce_axis_case(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_cross_entropy_axis(target, case, seed):
    check_call("cross_entropy_axis", case["name"], build_ce_axis(case), TARGETS[target], seed,
               scales=ce_axis_scales)


# ---------------------------------------------------------------------------------------------
# The package bugs this fuzzing found (all fixed), kept as regression tests.  The crash runs
# in a child process (a failure is a segfault).


def run_child(code, timeout=120, env=None):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


ALIASED_LABELS = """
    import numpy as np, csoftmax
    N, C = 64, 40
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((N, C))
    out = np.zeros((N, C))
    labels = out.reshape(-1).view(np.int64)[:N]   # class indices stored inside out's memory
    labels[:] = rng.integers(0, C, N)
    try:
        csoftmax.cross_entropy_with_grad(logits, labels, out=out)
    except ValueError:
        pass
    print("survived")
"""


def test_labels_sharing_memory_with_out_do_not_crash():
    """Found by this fuzzing (fixed in 25ad6d2): labels stored inside out's memory were
    overwritten by the gradient mid-call, then used as indices -- a segfault."""
    proc = run_child(ALIASED_LABELS)
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_weight_of_an_unused_class(bad):
    """Found by this fuzzing (fixed in 2536277): a NaN/inf weight of a class that is no row's
    target made every row NaN in the compiled kernels, even without smoothing (0 * w_total);
    PyTorch and the twin give finite values."""
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0]])
    y = np.array([0, 1])
    w = np.array([1.0, 1.0, bad])  # class 2 is never a target; PyTorch gives finite values
    loss, grad = csoftmax.cross_entropy_with_grad(x, y, weight=w, reduction="none")
    want_loss, want_grad = TWIN.cross_entropy_with_grad(x, y, weight=w, reduction="none")
    assert np.all(np.isfinite(want_loss)) and np.all(np.isfinite(want_grad))
    assert_agree(loss, want_loss, "loss")
    assert_agree(grad, want_grad, "grad")


@pytest.mark.parametrize("name", ["softmax_backward", "log_softmax_backward"])
@pytest.mark.parametrize("g_dtype", [np.float16, np.float32])
def test_backward_mixed_with_longdouble(name, g_dtype):
    """Found by this fuzzing (fixed in 2536277): float16/float32 with longdouble promoted the
    computation to longdouble, which no compiled kernel takes (TypeError "No matching
    signature found"); the twin computed it."""
    g = np.ones((2, 3), g_dtype)
    a = np.full((2, 3), 1 / 3, np.longdouble)
    want = getattr(TWIN, name)(g, a)
    got = getattr(csoftmax, name)(g, a)
    assert_agree(got, want, name)


@pytest.mark.parametrize("name", ["cross_entropy", "cross_entropy_with_grad"])
def test_huge_int_label_smoothing_is_a_value_error(name):
    """Found by this fuzzing (fixed in a220863): float(10**400) overflowed and the
    OverflowError escaped, neither TypeError nor ValueError."""
    with pytest.raises(ValueError):
        getattr(csoftmax, name)(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=10**400)
