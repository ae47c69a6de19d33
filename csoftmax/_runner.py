"""How one call runs: its thread count, and the layout plumbing between an N-D
array and the kernels' 2-D rows (or 3-D (outer, C, inner) blocks), ``out=``
included.  Shared by every operation family of the Frontend."""

from __future__ import annotations

import math
import os

import numpy as np

from . import _half, _threads
from ._validation import (
    RowLayout,
    aliases_exactly,
    check_num_threads,
    check_out,
)

# Below this many elements a call runs on one thread: waking a thread team
# (~1-2 us) costs more than it saves.  Measured on 2 cores: fused cross-entropy
# 16x1000 float32 14.4 us on one thread, 12.1 us on two; 8x1000 no gain.
SMALL_WORK = 1 << 14
# A cap on the team size, so that num_threads=10**6 cannot make OpenMP try to
# start a million threads; results do not depend on the thread count.
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))
_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))
# Columns per chunk of a row that the compiled kernels split over threads when
# rows are fewer than two per thread (CHUNK in src/rowops.hpp, exported as
# _kernels.COLUMN_CHUNK; a test checks they agree): a call may use as many
# threads as it has chunks.
COLUMN_CHUNK = 1 << 14
# Bytes of consecutive positions of the narrowest unit (a block of positions
# of one outer index) of the kernels over a middle axis: one cache line, to
# which the backward kernels' blocks narrow for many classes
# (strided_backward_width in src/stridedbackward.hpp).  A call over (outer,
# C, inner) is given at most outer * ceil(inner * itemsize / these bytes)
# threads, and each kernel takes no more than its own units: the forward's
# blocks are wider (strided_block_bytes), the 16-bit and masked ones another
# width again, and one count that never falls short of any of them keeps a
# second copy of their rules out of this layer.
STRIDED_MIN_UNIT_BYTES = 64
# op codes of the compiled fast path (OP_SOFTMAX, OP_LOG_SOFTMAX in src/kernels.pxi)
_OP_SOFTMAX, _OP_LOG_SOFTMAX = 0, 1



def _threads_for(n_rows, n, num_threads, split_rows=True):
    """Thread count of one call: explicit or the default, but one for small
    work whatever was asked (a thread team costs more than it saves there,
    and on a busy machine a 2-thread region can stall for milliseconds), and
    no more than the rows, or the column chunks of a kernel that splits rows
    (``split_rows``: softmax, log_softmax, logsumexp, cross-entropy)."""
    if num_threads is not None:
        num_threads = check_num_threads(num_threads)
    if n_rows * n < SMALL_WORK:
        return 1
    if num_threads is None:
        num_threads = _threads.get_num_threads()
    units = n_rows * -(-n // COLUMN_CHUNK) if split_rows else n_rows
    return max(1, min(num_threads, units, MAX_THREADS))


def _run_rows(kernel, inputs, compute, result, axis, out, num_threads, split_rows=True):
    """Run ``kernel(*rows_of_inputs, rows_of_result, n_threads)`` over ``axis``.

    ``inputs`` are C-contiguous arrays of one shape in the compute dtype.  The
    kernel writes straight into ``out`` when it can (same dtype, reduced axes
    last, and out either separate from the inputs or exactly one of them: in
    place); otherwise into a fresh array, copied into ``out`` if given.
    """
    shape = inputs[0].shape
    layout = RowLayout(shape, axis)
    if out is not None:
        check_out(out, shape, result)
    rows = [layout.rows(v) for v in inputs]
    direct = (
        out is not None
        and result == compute
        and layout.trailing
        and out.flags.aligned
        and all(not np.may_share_memory(out, v) or aliases_exactly(out, v) for v in inputs)
    )
    r2 = out.reshape(rows[0].shape) if direct else np.empty(rows[0].shape, compute)
    if r2.size:
        kernel(*rows, r2, _threads_for(layout.n_rows, layout.n, num_threads, split_rows))
    if direct:
        return out
    return _as_result(layout.restore(r2), result, out)


def _as_result(r, result, out=None):
    """A computed array ``r`` in the result dtype, into ``out`` if given
    (float32 to float16/bfloat16 by the kernels' rounding, see _half.store:
    never NumPy's float32 -> float16 cast, ~100 ns per subnormal value)."""
    if r.dtype != result and _half.half_kind(result) is not None:
        return _half.store(r, result, out)
    if out is not None:
        np.copyto(out, r, casting="unsafe")
        return out
    return r if r.dtype == result else r.astype(result)


def _threads_strided(outer, n, inner, itemsize, num_threads):
    """Thread count of a call over the middle axis of (outer, n, inner), as
    _threads_for: one for small work, at most MAX_THREADS and the units of
    STRIDED_MIN_UNIT_BYTES (the kernel then takes at most its own units)."""
    if num_threads is not None:
        num_threads = check_num_threads(num_threads)
    if outer * n * inner < SMALL_WORK:
        return 1
    if num_threads is None:
        num_threads = _threads.get_num_threads()
    units = outer * -(-inner * itemsize // STRIDED_MIN_UNIT_BYTES)
    return max(1, min(num_threads, units, MAX_THREADS))


def _middle(layout):
    """``(outer, C, inner)`` when ``layout`` reduces one axis that is not the
    last (of a C-contiguous array: then no copy is needed), else None."""
    if layout.trailing or len(layout.axes) != 1:
        return None
    a = layout.axes[0]
    shape = layout.shape
    return math.prod(shape[:a]), shape[a], math.prod(shape[a + 1:])


def _run_strided(kernel, rows_kernel, x, compute, result, dims, out, num_threads):
    """``kernel(*x3, out3, n_threads)`` over x (C-contiguous, compute dtype; a
    tuple of such arrays of one shape for several inputs) viewed as ``dims =
    (outer, C, inner)`` without a copy: the softmax-like kernels over a
    middle axis.  inner == 1 is rows of C: ``rows_kernel``.  out as in
    _run_rows: written directly when it can be."""
    inputs = x if isinstance(x, tuple) else (x,)
    shape = inputs[0].shape
    if out is not None:
        check_out(out, shape, result)
    direct = (
        out is not None
        and result == compute
        and out.flags.aligned
        and all(not np.may_share_memory(out, v) or aliases_exactly(out, v) for v in inputs)
    )
    r = out if direct else np.empty(shape, compute)
    outer, n, inner = dims
    if r.size:
        threads = _threads_strided(outer, n, inner, compute.itemsize, num_threads)
        if inner == 1:
            rows_kernel(*(v.reshape(outer, n) for v in inputs), r.reshape(outer, n), threads)
        else:
            kernel(*(v.reshape(dims) for v in inputs), r.reshape(dims), threads)
    if direct:
        return out
    return _as_result(r, result, out)


def _reduction_result(r, layout, keepdims, result, return_sign):
    """logsumexp's per-row values ``r`` as it returns them: the reduced (or
    kept) shape in the result dtype, a NumPy scalar when nothing is left, and
    with ``return_sign`` the sign (0 for -inf, NaN for NaN, else 1)."""
    r = _as_result(r.reshape(layout.kept_shape if keepdims else layout.reduced_shape), result)
    if r.ndim == 0:
        r = r[()]
    if return_sign:
        with np.errstate(invalid="ignore"):
            sign = np.where(np.isnan(r), np.nan, np.where(r == -np.inf, 0.0, 1.0))
        return r, sign.astype(result)[()]
    return r


