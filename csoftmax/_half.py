"""float16 and bfloat16: the dtypes, and their conversions to and from float32.

bfloat16 is ``ml_dtypes.bfloat16`` (the NumPy dtype of JAX and TensorFlow),
imported lazily: it is never a hard dependency (``pip install csoftmax[bf16]``).
The compiled kernels take 16-bit arrays as ``uint16`` views with a *kind*
(``F16``/``BF16``, as ``HALF_F16``/``HALF_BF16`` in ``src/half.hpp``).

The NumPy conversions here give the kernels' bits (``src/half.hpp``): float32
to 16 bits rounds to nearest even, overflows to inf, rounds float16
subnormals correctly -- with integer operations, not NumPy's float32 ->
float16 cast, which takes ~100 ns per value in float16's subnormal range --
and keeps NaN NaN with its quiet bit set.  ``round_once`` rounds float64
values (losses) once to a 16-bit dtype (ml_dtypes' own float64 -> bfloat16
rounds twice, through float32).
"""

from __future__ import annotations

import numpy as np

F16, BF16 = 0, 1
FLOAT16 = np.dtype(np.float16)
_BF16 = None  # the bfloat16 dtype once ml_dtypes is imported, False when absent
# elements per block of the NumPy conversions (bounds their temporaries)
_BLOCK = 1 << 16
# The most classes that the 16-bit kernels over an axis that is not the last
# take (HALF_STRIDED_MAX_C in src/halfstrided.hpp: a block's float32 scratch
# stays within 2 MiB a thread); more classes are moved last by a 16-bit copy.
HALF_STRIDED_CLASSES = 8192


def bfloat16():
    """``ml_dtypes.bfloat16`` as a NumPy dtype, or None when ml_dtypes is absent."""
    global _BF16
    if _BF16 is None:
        try:
            import ml_dtypes
        except ImportError:
            _BF16 = False
        else:
            _BF16 = np.dtype(ml_dtypes.bfloat16)
    return _BF16 or None


def require_bfloat16(what):
    """The bfloat16 dtype, or a TypeError naming ml_dtypes for ``what``."""
    dtype = bfloat16()
    if dtype is None:
        raise TypeError(
            f"{what} is bfloat16: csoftmax reads bfloat16 through the ml_dtypes package, "
            "which is not installed (pip install ml_dtypes, or csoftmax[bf16])"
        )
    return dtype


def half_kind(dtype):
    """F16 or BF16 for a (native or byte-swapped) 16-bit float dtype, else None."""
    if dtype.itemsize != 2:
        return None
    if dtype.kind == "f":
        return F16
    if dtype.kind == "V" and dtype.name == "bfloat16":
        return BF16
    return None


def promote(a, b):
    """np.promote_types, with float16 and bfloat16 together giving float32 (as
    in PyTorch; NumPy has no common dtype for them)."""
    ka, kb = half_kind(a), half_kind(b)
    if ka is not None and kb is not None and ka != kb:
        return np.dtype(np.float32)
    return np.promote_types(a, b)


def bits(a):
    """A native 16-bit float array's uint16 view."""
    return a.view(np.uint16)


# ---------------------------------------------------------------------------
# NumPy conversions (the twin's; the same bits as src/half.hpp)

def _f32_to_f16_bits(u):
    """uint32 bits of float32 values -> uint16 bits of float16 (half.hpp's f32_to_f16)."""
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    with np.errstate(over="ignore"):
        normal = ((a + 0xFFF + ((a >> 13) & 1)) - 0x38000000) >> 13
    shift = np.clip(126 - (a >> 23).astype(np.int64), 14, 25).astype(np.uint32)
    m = (a & 0x7FFFFF) | 0x800000
    q = m >> shift
    rem = m & ((np.uint32(1) << shift) - 1)
    half = np.uint32(1) << (shift - 1)
    q = q + ((rem > half) | ((rem == half) & (q & 1 == 1)))
    q = np.where(shift > 24, 0, q)
    r = np.where(a >= 0x38800000, normal, q)
    r = np.where(a >= 0x477FF000, 0x7C00, r)
    r = np.where(a > 0x7F800000, 0x7E00 | ((a >> 13) & 0x3FF), r)
    return (sign | r).astype(np.uint16)


def _f32_to_bf16_bits(u):
    with np.errstate(over="ignore"):
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, (u >> 16) | 0x40, r).astype(np.uint16)


def _f16_bits_to_f32(h):
    f = h.view(np.float16).astype(np.float32)
    nan = (h & 0x7C00 == 0x7C00) & (h & 0x3FF != 0)
    if nan.any():  # quieted, as vcvtph2ps does
        f.view(np.uint32)[nan] |= 0x400000
    return f


def load_numpy(h, kind):
    """uint16 bits (any shape) -> float32, exactly."""
    if kind == BF16:
        return (h.astype(np.uint32) << 16).view(np.float32)
    return _f16_bits_to_f32(h)


def store_numpy(f, out_bits, kind):
    """float32 values into the uint16 bits ``out_bits`` of ``f``'s size, by blocks."""
    u = np.ascontiguousarray(f, np.float32).reshape(-1).view(np.uint32)
    o = out_bits.reshape(-1)
    convert = _f32_to_bf16_bits if kind == BF16 else _f32_to_f16_bits
    for k in range(0, u.size, _BLOCK):
        o[k:k + _BLOCK] = convert(u[k:k + _BLOCK])


# ---------------------------------------------------------------------------
# rounding the float32/float64 results of the paths without a 16-bit kernel

_compiled_store = None  # a compiled half_store_array, set by csoftmax._dispatch


def store(r, dtype, out=None):
    """float32 ``r`` rounded to the 16-bit ``dtype`` (into ``out`` if given,
    which must be C-contiguous of r's size), with the kernels' conversion."""
    kind = half_kind(dtype)
    if out is None:
        out = np.empty(r.shape, dtype)
    r32 = np.ascontiguousarray(r, np.float32).reshape(-1)
    o = bits(out).reshape(-1)
    if _compiled_store is not None:
        _compiled_store(r32, o, kind)
    else:
        store_numpy(r32, o, kind)
    return out


# The largest float32: a float64 at most this large in magnitude casts without
# overflow (NaN compares false and casts quietly too).
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)


def round_once(value, dtype):
    """float64 value(s) rounded once to ``dtype`` (a 16-bit float dtype; else
    an ordinary cast): a scalar of that dtype for a scalar, else an array.

    float64 -> float32 by round-to-odd, then to 16 bits by round to nearest
    even: the same as rounding the float64 value directly, since float32
    keeps more than two extra bits."""
    if type(value) is float and (dtype == _FLOAT64
                                 or (dtype == _FLOAT32 and not abs(value) > _FLOAT32_MAX)):
        # a reduced loss: the scalar cast, without the errstate below (1.7 us of
        # a 1x1000 call's 16 us on the full path)
        return dtype.type(value)
    v = np.asarray(value, np.float64)
    kind = half_kind(dtype)
    if kind is None or kind == F16:  # NumPy's float64 -> float16 rounds once
        with np.errstate(over="ignore"):  # to +-inf, as a float16 computation would
            r = v.astype(dtype)
        return r[()] if r.ndim == 0 else r
    with np.errstate(invalid="ignore", over="ignore"):
        f = v.astype(np.float32)
        inexact = (f.astype(np.float64) != v) & ~np.isnan(v)
        fb = np.atleast_1d(f).view(np.uint32).copy()
        ib = np.atleast_1d(inexact)
        # toward zero (float32 rounded away from zero: one ulp back), then odd
        away = ib & (np.abs(np.atleast_1d(f).astype(np.float64)) > np.abs(np.atleast_1d(v)))
        fb[away] -= 1
        fb[ib] |= 1
    r = _f32_to_bf16_bits(fb).view(dtype).reshape(v.shape)
    return r[()] if r.ndim == 0 else r
