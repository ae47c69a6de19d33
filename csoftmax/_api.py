"""The public functions, written once over a kernel module.

``Frontend(kernels)`` binds the public API to one set of row kernels: the
compiled ``csoftmax._kernels*`` modules or the NumPy twin
``csoftmax._numpy_backend``.  Both kernel sets take the same arguments
(C-contiguous 2-D float32/float64 arrays, already validated), so validation,
axis handling, dtype rules, ``out=`` and reductions live here once, and the
two backends differ only in how a row is computed.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import numpy as np

from . import _threads
from ._validation import (
    CrossEntropyArgs,
    MaskRows,
    RowLayout,
    aliases_exactly,
    as_compute_array,
    check_num_threads,
    check_out,
    check_same_shape,
    check_where,
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
# Bytes of consecutive positions per unit of the kernels over a middle axis
# (STRIDED_BYTES in src/strided.hpp, exported as _kernels.STRIDED_BLOCK_BYTES):
# a call over (outer, C, inner) may use as many threads as it has units,
# outer * ceil(inner * itemsize / STRIDED_BLOCK_BYTES).
STRIDED_BLOCK_BYTES = 256
# op codes of the compiled fast path (OP_SOFTMAX, OP_LOG_SOFTMAX in src/kernels.pxi)
_OP_SOFTMAX, _OP_LOG_SOFTMAX = 0, 1


class CrossEntropyResult(NamedTuple):
    """What :func:`cross_entropy` returns when a ``return_*`` flag is set.

    ``loss`` is the loss (z-loss included); ``z_loss`` the z-loss part of it
    (None unless ``return_z_loss``); ``token_accuracy`` the fraction of counted
    positions whose target holds the largest logit (per position for
    ``reduction="none"``; None unless ``return_token_accuracy``).
    """

    loss: Any
    z_loss: Any = None
    token_accuracy: Any = None


class CrossEntropyGradResult(NamedTuple):
    """What :func:`cross_entropy_with_grad` returns when a ``return_*`` flag
    is set: as :class:`CrossEntropyResult`, with ``grad`` second."""

    loss: Any
    grad: Any
    z_loss: Any = None
    token_accuracy: Any = None


def _plain_options(z_loss, softcap, return_z_loss, return_token_accuracy):
    """True for the default z_loss, softcap and flags (the C fast path's call)."""
    return (softcap is None and return_z_loss is False and return_token_accuracy is False
            and type(z_loss) in (float, int) and z_loss == 0)


def _declined(*args):
    """The fast path of a kernel set that has none: every call takes the full path."""
    return None


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
    r = layout.restore(r2)
    if out is not None:
        np.copyto(out, r, casting="unsafe")
        return out
    return r if result == compute else r.astype(result)


def _threads_strided(outer, n, inner, itemsize, num_threads):
    """Thread count of a call over the middle axis of (outer, n, inner), as
    _threads_for: one for small work, at most the units (outer index, block
    of positions) and MAX_THREADS."""
    if num_threads is not None:
        num_threads = check_num_threads(num_threads)
    if outer * n * inner < SMALL_WORK:
        return 1
    if num_threads is None:
        num_threads = _threads.get_num_threads()
    units = outer * -(-inner * itemsize // STRIDED_BLOCK_BYTES)
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
    """``kernel(x3, out3, n_threads)`` over x (C-contiguous, compute dtype)
    viewed as ``dims = (outer, C, inner)`` without a copy: the softmax-like
    kernels over a middle axis.  inner == 1 is rows of C: ``rows_kernel``.
    out as in _run_rows: written directly when it can be."""
    shape = x.shape
    if out is not None:
        check_out(out, shape, result)
    direct = (
        out is not None
        and result == compute
        and out.flags.aligned
        and (not np.may_share_memory(out, x) or aliases_exactly(out, x))
    )
    r = out if direct else np.empty(shape, compute)
    outer, n, inner = dims
    if r.size:
        threads = _threads_strided(outer, n, inner, compute.itemsize, num_threads)
        if inner == 1:
            rows_kernel(x.reshape(outer, n), r.reshape(outer, n), threads)
        else:
            kernel(x.reshape(dims), r.reshape(dims), threads)
    if direct:
        return out
    if out is not None:
        np.copyto(out, r, casting="unsafe")
        return out
    return r if result == compute else r.astype(result)


def _reduction_result(r, layout, keepdims, result, return_sign):
    """logsumexp's per-row values ``r`` as it returns them: the reduced (or
    kept) shape in the result dtype, a NumPy scalar when nothing is left, and
    with ``return_sign`` the sign (0 for -inf, NaN for NaN, else 1)."""
    r = r.reshape(layout.kept_shape if keepdims else layout.reduced_shape)
    r = r.astype(result, copy=False)
    if r.ndim == 0:
        r = r[()]
    if return_sign:
        with np.errstate(invalid="ignore"):
            sign = np.where(np.isnan(r), np.nan, np.where(r == -np.inf, 0.0, 1.0))
        return r, sign.astype(result)[()]
    return r


_SIGNATURE_DTYPES = {
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "int32_t": np.dtype(np.int32), "int64_t": np.dtype(np.int64),
}


def _specialisations(kernel):
    """{(dtype, ...): callable} of a Cython kernel fused over float/double (and
    int32/int64 labels), keyed by the dtypes of its fused arguments; {} for a
    plain function (the NumPy twin): the caller then calls the kernel itself."""
    sigs = getattr(kernel, "__signatures__", None) or {}
    return {
        tuple(_SIGNATURE_DTYPES[part] for part in sig.split("|")): specialised
        for sig, specialised in sigs.items()
    }


def _restore_frontend(name):
    """Unpickle a frontend (and so the public functions, its bound methods)."""
    from . import _dispatch

    if name in _dispatch.FRONTENDS:
        return _dispatch.FRONTENDS[name]
    return _dispatch.cpu_frontends()[name.split("-", 1)[1]]


class Frontend:
    """The public API over one kernel module (see the module docstring)."""

    def __reduce__(self):
        # the public functions are bound methods: pickling them (multiprocessing,
        # dask.distributed, joblib) pickles the frontend by name
        return _restore_frontend, (self.name,)

    def __init__(self, kernels, name, fast=True):
        self.kernels = kernels
        self.name = name
        # the fused kernels' float/double specialisations, to skip Cython's
        # run-time dispatch on the full path
        self._by_dtype = {
            op: _specialisations(getattr(kernels, op))
            for op in ("softmax_rows", "log_softmax_rows", "label_summary",
                       "cross_entropy_index_rows", "cross_entropy_prob_rows")
        }
        # The compiled kernels' C fast path for the common call (see
        # src/fastpath.pxi): it returns None for anything else, and the full
        # path below runs.  fast=False leaves it out (tests compare the two).
        self._fast_rows = self._fast_logsumexp = self._fast_backward = _declined
        self._fast_cross_entropy = _declined
        if fast and hasattr(kernels, "fast_rows"):
            kernels.configure(SMALL_WORK, MAX_THREADS, _threads.get_num_threads)
            self._fast_rows = kernels.fast_rows
            self._fast_logsumexp = kernels.fast_logsumexp
            self._fast_backward = kernels.fast_backward
            self._fast_cross_entropy = kernels.fast_cross_entropy

    def _kernel(self, op, *dtypes):
        """The kernel ``op`` specialised for ``dtypes`` (the fused arguments'),
        or the kernel itself, which then dispatches on its arguments."""
        return self._by_dtype[op].get(dtypes) or getattr(self.kernels, op)

    # -- shared plumbing ---------------------------------------------------

    def _rowwise(self, kernel, x, axis, out, num_threads, strided=None):
        """Run a shape-preserving row kernel over ``axis`` of x, or over a
        single axis that is not the last the kernel ``strided`` (of the same
        operation over the middle axis of (outer, C, inner), no copy)."""
        xc, compute, result = as_compute_array(x, "x")
        if strided is not None:
            dims = _middle(RowLayout(xc.shape, axis))
            if dims is not None:
                return _run_strided(strided, kernel, xc, compute, result, dims, out,
                                    num_threads)
        return _run_rows(kernel, (xc,), compute, result, axis, out, num_threads)

    def _masked(self, kernel, inputs, where, compute, result, axis, out, num_threads,
                name="x"):
        """Run a masked row kernel ``kernel(*rows, mask, rows_of_result, n_threads)``
        over ``axis``; the mask is read in place (see MaskRows)."""
        mask = MaskRows(where, inputs[0].shape, RowLayout(inputs[0].shape, axis), name)
        if isinstance(out, np.ndarray) and np.may_share_memory(out, mask.view):
            raise ValueError("out must not overlap where")

        def run(*args):
            kernel(*args[:-2], mask, *args[-2:])

        return _run_rows(run, inputs, compute, result, axis, out, num_threads,
                         split_rows=False)

    def _masked_rowwise(self, kernel, x, where, axis, out, num_threads):
        xc, compute, result = as_compute_array(x, "x")
        return self._masked(kernel, (xc,), where, compute, result, axis, out, num_threads)

    # -- softmax family ----------------------------------------------------

    def softmax(self, x, axis=-1, *, out=None, where=None, num_threads=None):
        """Softmax over ``axis``: ``exp(x - max) / sum(exp(x - max))``.

        Parameters
        ----------
        x : array_like
            Input of any shape; float32/float64 computed natively, float16 in
            float32, integers and bool as float64.
        axis : int, tuple of int or None, default -1
            Axis (or axes) to normalise over; None means all elements.
        out : ndarray, optional
            C-contiguous writeable array of x's shape and result dtype; may be
            ``x`` itself (computed in place).
        where : array_like of bool, optional
            Broadcastable to x (as in NumPy's ufuncs and ``jax.nn.softmax``):
            entries where it is False are left out and get 0.  A slice with no
            True entry is all 0 -- the convention of PyTorch's
            ``torch._safe_softmax`` for fully padded attention rows, where
            ``torch.masked.softmax`` gives NaN; ``softmax(x, where=x != -inf)``
            is ``torch._safe_softmax(x)``.  Kept entries follow the rules below
            (NaN or +inf kept, or only -inf kept: the kept entries are NaN).
            The mask is read in place, broadcast axes included (never expanded
            to x's shape); an all-True mask gives the unmasked result's bits.
        num_threads : int, optional
            OpenMP threads; default :func:`csoftmax.get_num_threads` (small
            inputs always run on one thread).

        Returns
        -------
        ndarray
            C-contiguous, x's shape and dtype.  A row holding NaN or +inf, or
            all -inf, is NaN; other -inf entries give 0.

        Examples
        --------
        >>> import numpy as np, csoftmax
        >>> csoftmax.softmax(np.array([[1.0, 2.0, 3.0]])).round(4)
        array([[0.09  , 0.2447, 0.6652]])

        A key padding mask of attention scores ``(batch, heads, query, key)``,
        one mask row per batch entry; the second entry is all padding:

        >>> scores = np.zeros((2, 1, 2, 3))
        >>> keys = np.array([[True, True, False], [False, False, False]])
        >>> csoftmax.softmax(scores, where=keys[:, None, None, :])[:, 0, 0]
        array([[0.5, 0.5, 0. ],
               [0. , 0. , 0. ]])
        """
        if where is not None:
            return self._masked_rowwise(self.kernels.masked_softmax_rows, x, where, axis, out,
                                        num_threads)
        r = self._fast_rows(_OP_SOFTMAX, x, axis, out, num_threads)
        if r is not None:
            return r
        return self._rowwise(self.kernels.softmax_rows, x, axis, out, num_threads,
                             getattr(self.kernels, "softmax_strided", None))

    def log_softmax(self, x, axis=-1, *, out=None, where=None, num_threads=None):
        """Log-softmax over ``axis``: ``(x - max) - log(sum(exp(x - max)))``.

        Parameters and results as for :func:`softmax`; with ``where``, masked
        entries and slices with no True entry give -inf (``torch.masked.log_softmax``
        gives NaN for the latter).

        Examples
        --------
        >>> import numpy as np, csoftmax
        >>> csoftmax.log_softmax(np.array([0.0, 0.0])).round(4)
        array([-0.6931, -0.6931])
        >>> csoftmax.log_softmax(np.array([0.0, 0.0, 5.0]), where=np.array([True, True, False]))
        array([-0.69314718, -0.69314718,        -inf])
        """
        if where is not None:
            return self._masked_rowwise(self.kernels.masked_log_softmax_rows, x, where, axis,
                                        out, num_threads)
        r = self._fast_rows(_OP_LOG_SOFTMAX, x, axis, out, num_threads)
        if r is not None:
            return r
        return self._rowwise(self.kernels.log_softmax_rows, x, axis, out, num_threads,
                             getattr(self.kernels, "log_softmax_strided", None))

    def logsumexp(self, x, axis=-1, *, keepdims=False, b=None, return_sign=False,
                  where=None, num_threads=None):
        """``log(sum(exp(x)))`` over ``axis``, computed without overflow.

        Parameters
        ----------
        x : array_like
            As for :func:`softmax`.
        axis : int, tuple of int or None, default -1
            Axis (or axes) reduced; None reduces all elements.
        keepdims : bool, default False
            Keep the reduced axes as dimensions of length one (as in SciPy).
        b : array_like, optional
            Factors of ``exp(x)``, broadcastable to x, possibly negative or zero:
            the result is ``log(sum(b * exp(x)))`` (as in SciPy; zero factors
            drop their term whatever x holds).
        return_sign : bool, default False
            Also return the sign of the sum (+1, 0 or -1); otherwise a negative
            sum gives NaN (as in SciPy).
        where : array_like of bool, optional
            Broadcastable to x: only the entries where it is True are summed
            (what they hold elsewhere, NaN included, does not matter); a slice
            with no True entry gives -inf.
        num_threads : int, optional
            As for :func:`softmax`.

        Returns
        -------
        ndarray or scalar
            x's shape without the reduced axes (a NumPy scalar when nothing is
            left), in x's dtype.  As in SciPy and PyTorch: an empty or all -inf
            slice gives -inf, a slice holding +inf (and no NaN) +inf, NaN NaN.
            With ``return_sign``, the pair ``(result, sign)``.

        Examples
        --------
        >>> import numpy as np, csoftmax
        >>> float(csoftmax.logsumexp(np.array([0.0, 0.0])).round(6))
        0.693147
        >>> csoftmax.logsumexp(np.array([0.0, 0.0]), b=np.array([1.0, -2.0]), return_sign=True)
        (np.float64(0.0), np.float64(-1.0))
        >>> csoftmax.logsumexp(np.array([[0.0, 0.0, np.nan], [1.0, 2.0, 3.0]]),
        ...                    where=np.array([[True, True, False], [False, False, False]]))
        array([0.69314718,       -inf])
        """
        if where is not None:
            return self._logsumexp_masked(x, where, axis, keepdims, b, return_sign,
                                          num_threads)
        if not (keepdims or return_sign) and b is None:
            r = self._fast_logsumexp(x, axis, num_threads)
            if r is not None:
                return r
        if b is not None:
            return self._logsumexp_scaled(x, b, axis, keepdims, return_sign, num_threads)
        xc, compute, result = as_compute_array(x, "x")
        layout = RowLayout(xc.shape, axis)
        dims = _middle(layout)
        strided = getattr(self.kernels, "logsumexp_strided", None)
        if dims is not None and dims[2] > 1 and strided is not None:
            # a single axis that is not the last: over (outer, C, inner), no copy
            outer, n, inner = dims
            r = np.empty(outer * inner, compute)
            strided(xc.reshape(dims), r.reshape(outer, inner),
                    _threads_strided(outer, n, inner, compute.itemsize, num_threads))
        else:
            x2 = layout.rows(xc) if dims is None else xc.reshape(dims[0], dims[1])
            r = np.empty(layout.n_rows, compute)
            self.kernels.logsumexp_rows(x2, r, _threads_for(layout.n_rows, layout.n,
                                                            num_threads))
        return _reduction_result(r, layout, keepdims, result, return_sign)

    def _logsumexp_masked(self, x, where, axis, keepdims, b, return_sign, num_threads):
        """logsumexp over the entries ``where`` keeps (-inf where none is)."""
        xc, compute, result = as_compute_array(x, "x")
        if b is not None:
            # b = 0 drops a term whatever x holds: the mask as factors (b and
            # x are made full-size there anyway)
            w = check_where(where, xc.shape)
            return self._logsumexp_scaled(x, np.where(w, as_compute_array(b, "b")[0], 0), axis,
                                          keepdims, return_sign, num_threads)
        layout = RowLayout(xc.shape, axis)
        mask = MaskRows(where, xc.shape, layout)
        r = np.empty(layout.n_rows, compute)
        self.kernels.masked_logsumexp_rows(
            layout.rows(xc), mask, r, _threads_for(layout.n_rows, layout.n, num_threads, False))
        return _reduction_result(r, layout, keepdims, result, return_sign)

    def _logsumexp_scaled(self, x, b, axis, keepdims, return_sign, num_threads):
        """``log|sum(b exp(x))|`` as a difference of two unscaled logsumexps:
        of ``x + log b`` where b > 0 and of ``x + log(-b)`` where b < 0."""
        xc, _, result = as_compute_array(x, "x")
        bc, _, b_result = as_compute_array(b, "b")
        result = np.promote_types(result, b_result)
        try:
            xc, bc = np.broadcast_arrays(xc.astype(result), bc.astype(result))
        except ValueError:
            raise ValueError(
                f"b of shape {bc.shape} does not broadcast to x of shape {xc.shape}"
            ) from None
        with np.errstate(divide="ignore", invalid="ignore"):
            log_b = np.log(np.abs(bc))
            pos = np.where(bc > 0, xc + log_b, -np.inf)
            neg = np.where(bc < 0, xc + log_b, -np.inf)
            nan = np.isnan(bc) | np.isnan(xc)
            pos[nan] = np.nan
            lp = np.asarray(self.logsumexp(pos, axis, keepdims=keepdims, num_threads=num_threads))
            ln = np.asarray(self.logsumexp(neg, axis, keepdims=keepdims, num_threads=num_threads))
            big, small = np.maximum(lp, ln), np.minimum(lp, ln)
            r = big + np.log1p(-np.exp(small - big))
            r = np.where(lp == ln, np.where(np.isnan(lp), np.nan, -np.inf), r)
            sign = np.where(lp > ln, 1.0, np.where(lp < ln, -1.0, 0.0))
            sign = np.where(np.isnan(r), np.nan, sign)
        r = r.astype(result)
        if return_sign:
            return r[()], sign.astype(result)[()]
        return np.where(sign < 0, np.nan, r).astype(result)[()]

    def _backward(self, kernel, grad_output, output, axis, out, num_threads, where=None):
        g, g_compute, g_result = as_compute_array(grad_output, "grad_output")
        a, compute, result = as_compute_array(output, "output")
        check_same_shape(g, a, "grad_output", "output")
        if g_compute != compute or g_result != result:
            # compute in the wider of the two compute dtypes, return the wider result
            compute = np.promote_types(g_compute, compute)
            result = np.promote_types(g_result, result)
            g = g.astype(compute, copy=False)
            a = a.astype(compute, copy=False)
        if where is not None:
            return self._masked(kernel, (g, a), where, compute, result, axis, out, num_threads,
                                "output")
        # the backward kernels keep each row on one thread
        return _run_rows(kernel, (g, a), compute, result, axis, out, num_threads,
                         split_rows=False)

    def softmax_backward(self, grad_output, output, axis=-1, *, out=None, where=None,
                         num_threads=None):
        """Gradient through softmax: ``a * (g - sum(g * a))`` over ``axis``.

        Parameters
        ----------
        grad_output : array_like
            ``dL/da``, the upstream gradient, of ``output``'s shape.
        output : array_like
            ``a = softmax(x, axis)``.
        axis, out, num_threads
            As for :func:`softmax`; ``out`` may be ``grad_output`` or ``output``.
        where : array_like of bool, optional
            The mask of the forward call: the sum runs over the kept entries
            and the gradient is 0 at masked ones.

        Returns
        -------
        ndarray
            ``dL/dx``, C-contiguous, of output's shape.

        Examples
        --------
        >>> import numpy as np, csoftmax
        >>> keep = np.array([True, True, False])
        >>> a = csoftmax.softmax(np.zeros(3), where=keep)
        >>> csoftmax.softmax_backward(np.array([1.0, 0.0, 7.0]), a, where=keep)
        array([ 0.25, -0.25,  0.  ])
        >>> a = csoftmax.softmax(np.array([1.0, 2.0]))
        >>> csoftmax.softmax_backward(np.array([1.0, 0.0]), a).round(4)
        array([ 0.1966, -0.1966])
        """
        if where is not None:
            return self._backward(self.kernels.masked_softmax_backward_rows, grad_output, output,
                                  axis, out, num_threads, where)
        r = self._fast_backward(_OP_SOFTMAX, grad_output, output, axis, out, num_threads)
        if r is not None:
            return r
        return self._backward(
            self.kernels.softmax_backward_rows, grad_output, output, axis, out, num_threads
        )

    def log_softmax_backward(self, grad_output, output, axis=-1, *, out=None, where=None,
                             num_threads=None):
        """Gradient through log-softmax: ``g - exp(o) * sum(g)`` over ``axis``.

        Parameters
        ----------
        grad_output : array_like
            ``dL/d(log a)``, of ``output``'s shape.
        output : array_like
            ``o = log_softmax(x, axis)``.
        axis, out, num_threads
            As for :func:`softmax`; ``out`` may be ``grad_output`` or ``output``.
        where : array_like of bool, optional
            As for :func:`softmax_backward`.

        Returns
        -------
        ndarray
            ``dL/dx``, C-contiguous, of output's shape.

        Examples
        --------
        >>> import numpy as np, csoftmax
        >>> o = csoftmax.log_softmax(np.array([0.0, 0.0]))
        >>> csoftmax.log_softmax_backward(np.array([-1.0, 0.0]), o)
        array([-0.5,  0.5])
        """
        if where is not None:
            return self._backward(self.kernels.masked_log_softmax_backward_rows, grad_output,
                                  output, axis, out, num_threads, where)
        r = self._fast_backward(_OP_LOG_SOFTMAX, grad_output, output, axis, out, num_threads)
        if r is not None:
            return r
        return self._backward(
            self.kernels.log_softmax_backward_rows, grad_output, output, axis, out, num_threads
        )

    # -- cross-entropy -----------------------------------------------------

    def _cross_entropy(self, args, grad, num_threads):
        """Row losses (float64) and the gradient into ``grad`` (or none);
        returns the reduced loss in the result dtype."""
        n_rows, n_classes = args.n_rows, args.n_classes
        threads = _threads_for(n_rows, n_classes, num_threads)
        row_loss = np.empty(n_rows, np.float64)
        if args.labels is not None:
            w64 = None if args.weight is None else args.weight.astype(np.float64)
            bad, total = self._kernel("label_summary", args.labels.dtype)(
                args.labels, n_classes, args.ignore_index, w64, threads)
            if bad >= 0:
                raise args.bad_label(bad)
        else:
            total = float(n_rows)
        if args.reduction == "mean":
            # PyTorch: divide by the summed weight of the counted rows (their
            # number without weights; N for probability targets).  Zero counted
            # weight gives nan, and nan gradients on rows that were counted.
            scale = 1.0 / total if total != 0.0 else float("nan")
        else:
            scale = 1.0
        # z-loss, soft cap, token accuracy: options of the kernels, passed only
        # when set (the defaults run the plain kernels)
        z = args.z_loss
        flags = args.return_z_loss or args.return_token_accuracy
        extra = {}
        row_z = row_acc = None
        kept = total
        if z != 0.0 or flags:
            # the z-loss and the accuracy count positions, whatever the weights
            if args.labels is not None and args.weight is not None:
                kept = float(np.count_nonzero(args.labels != args.ignore_index))
        if z != 0.0:
            row_z = np.empty(n_rows, np.float64)
            z_scale = 1.0
            if args.reduction == "mean":
                z_scale = 1.0 / kept if kept != 0.0 else float("nan")
            extra.update(z_loss=z, z_scale=z_scale, row_z=row_z)
        if args.softcap is not None:
            extra["softcap"] = args.softcap
        if args.return_token_accuracy:
            row_acc = np.empty(n_rows, np.float64)
            extra["row_acc"] = row_acc
        total_loss = 0.0  # the kernels' sum of the row losses, in an order fixed by the shape
        if n_rows:
            if args.middle is not None:
                outer, _, inner = args.middle
                total_loss = self.kernels.cross_entropy_index_strided(
                    args.logits, args.labels.reshape(outer, inner), args.weight,
                    args.ignore_index, args.label_smoothing, scale, row_loss, grad,
                    _threads_strided(outer, n_classes, inner, args.compute.itemsize,
                                     num_threads), **extra,
                )
            elif args.labels is not None:
                total_loss = self._kernel(
                    "cross_entropy_index_rows", args.compute, args.labels.dtype)(
                    args.logits, args.labels, args.weight, args.ignore_index,
                    args.label_smoothing, scale, row_loss, grad, threads, **extra,
                )
            else:
                total_loss = self._kernel("cross_entropy_prob_rows", args.compute)(
                    args.logits, args.probs, args.weight, args.label_smoothing,
                    scale, row_loss, grad, threads, **extra,
                )
        if args.reduction == "none":
            if row_z is not None:
                row_loss += row_z
            loss = self._per_position(args, row_loss)
            if not flags:
                return loss
            return (loss,
                    self._per_position(args, row_z if row_z is not None
                                       else np.zeros(n_rows)) if args.return_z_loss else None,
                    self._per_position(args, row_acc) if args.return_token_accuracy else None)
        if args.reduction == "mean":
            total_loss = total_loss / total if total != 0.0 else float("nan")
        z_part = 0.0
        if row_z is not None:
            z_part = float(np.add.reduce(row_z))  # pairwise, in row order
            if args.reduction == "mean":
                z_part = z_part / kept if kept != 0.0 else float("nan")
            total_loss = total_loss + z_part
        loss = args.result.type(total_loss)
        if not flags:
            return loss
        accuracy = None
        if args.return_token_accuracy:
            correct = float(np.add.reduce(row_acc))
            accuracy = args.result.type(correct / kept if kept != 0.0 else float("nan"))
        return loss, args.result.type(z_part) if args.return_z_loss else None, accuracy

    @staticmethod
    def _per_position(args, rows):
        """Per-row float64 values as a "none" result (the positions' shape)."""
        r = rows.astype(args.result).reshape(args.positions)
        return r[()] if args.one_sample else r

    def cross_entropy(self, logits, target, *, axis=-1, weight=None, ignore_index=-100,
                      reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                      return_z_loss=False, return_token_accuracy=False, num_threads=None):
        """Cross-entropy of softmax(logits) against ``target``, as
        ``torch.nn.functional.cross_entropy`` on ``(N, C)`` input.

        Parameters
        ----------
        logits : array_like, shape (N, C), (C,) or any N-D shape
            Unnormalised scores; the classes lie along ``axis``.
        target : array_like
            Class indices of the logits' shape without ``axis`` ((N,) for
            (N, C) logits, a scalar for (C,)), any integer dtype; or class
            probabilities of the logits' shape, floating dtype (soft labels;
            they need not sum to one).
        axis : int, default -1
            The class axis: ``(batch, seq, vocab)`` logits take the default,
            PyTorch's ``(N, C, d1, ...)`` layout ``axis=1``.
        weight : array_like, shape (C,), optional
            Per-class weights.
        ignore_index : int, default -100
            Class-index rows with this target count 0 and have a zero gradient,
            whatever their logits.  Must be negative with probability targets.
        reduction : {"mean", "sum", "none"}
            "mean" divides by the summed weight of the counted positions (their
            number for probability targets); over zero positions it is nan.
            "none" gives the loss of every position (the target's shape).
        label_smoothing : float in [0, 1]
            Mixes the target with the uniform distribution, as PyTorch does.
        z_loss : float >= 0, default 0
            PaLM's auxiliary z-loss: ``z_loss * lse**2`` per counted position
            (``lse`` the logsumexp of its logits, after ``softcap``) is added
            to the loss, unweighted by ``weight`` and, for "mean", divided by
            the number of counted positions (not by the summed class weight).
        softcap : float > 0, optional
            Gemma 2's logit soft-capping: the logits become
            ``softcap * tanh(logits / softcap)`` before everything else (the
            gradient goes back through the cap).
        return_z_loss, return_token_accuracy : bool, default False
            With either, the result is a :class:`CrossEntropyResult` named
            tuple ``(loss, z_loss, token_accuracy)`` (a field not asked for is
            None): ``z_loss`` is the z-loss part of ``loss``, reduced the same
            way; ``token_accuracy`` the fraction of counted positions (not
            ignored) whose target holds the largest (soft-capped) logit, for
            "mean" and "sum" alike, or per position (1.0/0.0; 0.0 where
            ignored) for "none".  A tie for the largest logit counts as correct
            when the target is one of the tied classes (not np.argmax's first
            index); a position whose loss is NaN (logits holding NaN, or,
            without a cap, +inf or only -inf) is not correct.  Class-index
            targets only.
        num_threads : int, optional
            As for :func:`softmax`.

        Returns
        -------
        scalar or ndarray
            A NumPy scalar of the logits' dtype ("none": the logits' shape
            without ``axis``); a :class:`CrossEntropyResult` with a
            ``return_*`` flag.

        Examples
        --------
        >>> import numpy as np, csoftmax
        >>> x = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> float(csoftmax.cross_entropy(x, np.array([0, 2])).round(4))
        0.6691
        >>> images, labels = np.zeros((1, 3, 2, 2)), np.zeros((1, 2, 2), int)  # (N, C, H, W)
        >>> csoftmax.cross_entropy(images, labels, axis=1, reduction="none").round(4)
        array([[[1.0986, 1.0986],
                [1.0986, 1.0986]]])
        >>> r = csoftmax.cross_entropy(x, np.array([0, 2]), z_loss=1e-4, softcap=30.0,
        ...                            return_token_accuracy=True)
        >>> float(r.loss.round(4)), float(r.token_accuracy), r.z_loss
        (0.6697, 1.0, None)
        """
        plain = _plain_options(z_loss, softcap, return_z_loss, return_token_accuracy)
        if weight is None and plain:
            r = self._fast_cross_entropy(logits, target, axis, ignore_index, reduction,
                                         label_smoothing, num_threads, False, None)
            if r is not None:
                return r
        args = CrossEntropyArgs(logits, target, weight, ignore_index, reduction, label_smoothing,
                                axis, z_loss, softcap, return_z_loss, return_token_accuracy)
        r = self._cross_entropy(args, None, num_threads)
        return CrossEntropyResult(*r) if isinstance(r, tuple) else r

    def cross_entropy_with_grad(self, logits, target, *, axis=-1, weight=None,
                                ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                z_loss=0.0, softcap=None, return_z_loss=False,
                                return_token_accuracy=False, out=None, num_threads=None):
        """Cross-entropy and its gradient with respect to the logits, in one pass.

        The gradient of the row loss ``-sum(y' log a)`` is ``a * sum(y') - y'``
        where ``y'`` is the weighted, smoothed target (``a - y`` only when
        ``y'`` sums to one), times the reduction's factor; PyTorch's
        ``loss.backward()`` with upstream gradient 1 gives the same.

        Parameters
        ----------
        logits, target, axis, weight, ignore_index, reduction, label_smoothing
            As for :func:`cross_entropy`.
        z_loss, softcap, return_z_loss, return_token_accuracy
            As for :func:`cross_entropy`; the gradient includes both terms
            exactly (``2 z_loss lse softmax`` per counted position times the
            "mean" factor, and the ``1 - tanh**2`` of the cap).  The cap is
            applied row by row in a scratch row per thread; rows of fewer than
            32 classes, rows split over threads (fewer rows than two per
            thread, more than 16384 classes), probability targets and a class
            axis that is not the last go through a capped copy of the logits
            instead (one more array of the logits' size).
        out : ndarray, optional
            Where to write the gradient: C-contiguous, writeable, the logits'
            shape and dtype.  ``out=logits`` computes in place.
        num_threads : int, optional
            As for :func:`softmax`.

        Returns
        -------
        loss : scalar or ndarray
            As :func:`cross_entropy` returns it.
        grad : ndarray
            ``d loss / d logits``, the logits' shape and dtype.

        With a ``return_*`` flag: a :class:`CrossEntropyGradResult` named
        tuple ``(loss, grad, z_loss, token_accuracy)``.

        Examples
        --------
        >>> import numpy as np, csoftmax
        >>> loss, grad = csoftmax.cross_entropy_with_grad(np.zeros((1, 2)), np.array([1]))
        >>> float(loss.round(4)), grad
        (0.6931, array([[ 0.5, -0.5]]))
        """
        plain = _plain_options(z_loss, softcap, return_z_loss, return_token_accuracy)
        if weight is None and plain:
            r = self._fast_cross_entropy(logits, target, axis, ignore_index, reduction,
                                         label_smoothing, num_threads, True, out)
            if r is not None:
                return r
        args = CrossEntropyArgs(logits, target, weight, ignore_index, reduction, label_smoothing,
                                axis, z_loss, softcap, return_z_loss, return_token_accuracy)
        if out is not None:
            args.check_out(out)
        x = args.logits
        direct = (
            out is not None
            and not args.moved
            and args.result == args.compute
            and out.flags.aligned
            and (not np.may_share_memory(out, x) or aliases_exactly(out, x))
        )
        if direct:
            grad = out.reshape(x.shape)
        else:
            grad = np.empty(x.shape, args.compute)
        loss = self._cross_entropy(args, grad, num_threads)
        if direct:
            grad = out
        else:
            grad = args.restore(grad)
            if out is not None:
                np.copyto(out, grad, casting="unsafe")
                grad = out
            elif args.result != args.compute:
                grad = grad.astype(args.result)
        if isinstance(loss, tuple):
            return CrossEntropyGradResult(loss[0], grad, *loss[1:])
        return loss, grad
