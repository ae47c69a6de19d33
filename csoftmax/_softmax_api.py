"""The softmax family of the public API -- softmax, log_softmax, logsumexp and
their backward passes -- as a mixin of :class:`csoftmax._api.Frontend` (which
holds ``kernels``, the fast-path entry points and ``_kernel``)."""

from __future__ import annotations

import numpy as np

from ._half import HALF_STRIDED_CLASSES, bits, half_kind, promote
from ._runner import (
    _OP_LOG_SOFTMAX,
    _OP_SOFTMAX,
    _middle,
    _reduction_result,
    _run_rows,
    _run_strided,
    _threads_for,
    _threads_strided,
)
from ._validation import (
    MaskRows,
    RowLayout,
    as_compute_array,
    check_same_shape,
    check_where,
    half_array,
    middle_mask,
)

#: the masked kernels' ops (masked_row, src/masked.hpp), for half_masked_rows
(_MASKED_SOFTMAX, _MASKED_LOG_SOFTMAX, _MASKED_LOGSUMEXP, _MASKED_SOFTMAX_BACKWARD,
 _MASKED_LOG_SOFTMAX_BACKWARD) = range(5)


def _with_axis(r, axis):
    """The fast path's reduction ``r`` over the int ``axis`` (the only axis it
    takes) with that axis put back with size 1, as ``keepdims=True`` returns it:
    a view by indexing (``np.expand_dims`` took 1.7 us, the call itself 1)."""
    if axis < 0:
        axis += np.ndim(r) + 1
    return r[(slice(None),) * axis + (None,)]


def _scaled_rows(x, b, axis):
    """``(x2, b2, layout)``: x (float32/float64, C-contiguous) and b (broadcast
    to it, of its dtype) as (rows, n) for the kernel ``logsumexp_scaled_rows``
    where the reduction is over the last axis and b's rows are contiguous and
    evenly spaced (one row for all: spaced 0) -- views, no copies; else None."""
    if x.ndim == 0 or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        return None
    layout = RowLayout(x.shape, axis)
    if layout.axes != (x.ndim - 1,) or b.strides[-1] != b.itemsize:
        return None
    b2 = b.view()
    try:
        b2.shape = (layout.n_rows, layout.n)  # no copy: a view or an error
    except (AttributeError, ValueError):
        return None
    return x.reshape(layout.n_rows, layout.n), b2, layout


class SoftmaxFunctions:
    """softmax, log_softmax, logsumexp, softmax_backward, log_softmax_backward."""

    # -- shared plumbing ---------------------------------------------------

    def _rowwise(self, kernel, x, axis, out, num_threads, strided=None, op=None):
        """Run a shape-preserving row kernel over ``axis`` of x, or over a
        single axis that is not the last the kernel ``strided`` (of the same
        operation over the middle axis of (outer, C, inner), no copy).
        float16/bfloat16 x runs the 16-bit kernels of ``op`` (softmax or
        log_softmax): over a single axis that is not the last the 16-bit
        strided kernel (up to HALF_STRIDED_CLASSES classes), else rows (through
        a 16-bit transposed copy for another axis)."""
        xh, kind = half_array(x, "x")
        if kind is not None:
            dims = self._half_middle(xh, axis)
            if dims is not None:
                half_strided = self.kernels.half_strided

                def run3(x3, r3, threads):
                    half_strided(op, bits(x3), bits(r3), kind, threads)

                return _run_strided(run3, None, xh, xh.dtype, xh.dtype, dims, out, num_threads)
            half_rows = self.kernels.half_rows

            def run(x2, r2, threads):
                half_rows(op, bits(x2), bits(r2), kind, threads)

            return _run_rows(run, (xh,), xh.dtype, xh.dtype, axis, out, num_threads)
        xc, compute, result = as_compute_array(xh, "x")
        if strided is not None:
            dims = _middle(RowLayout(xc.shape, axis))
            if dims is not None:
                return _run_strided(strided, kernel, xc, compute, result, dims, out,
                                    num_threads)
        return _run_rows(kernel, (xc,), compute, result, axis, out, num_threads)

    def _half_middle(self, xh, axis):
        """``(outer, C, inner)`` where a 16-bit x reduces one axis that is not the
        last (inner > 1) over at most the 16-bit strided kernels' classes: they
        read it in place (src/halfstrided.hpp); else None (the rows, or a 16-bit
        copy with the axis moved last)."""
        dims = _middle(RowLayout(xh.shape, axis))
        if dims is None or dims[2] == 1 or dims[1] > HALF_STRIDED_CLASSES:
            return None
        return dims

    def _masked(self, kernel, inputs, where, compute, result, axis, out, num_threads,
                name="x", masked_op=None, kind=None):
        """Run a masked row kernel ``kernel(*rows, mask, rows_of_result, n_threads)``
        over ``axis``; the mask is read in place (see MaskRows).  With
        ``masked_op``, over one axis that is not the last the kernels over the
        middle axis read x in place too (16-bit inputs of ``kind``: as their
        bits, computed in float32)."""
        middle = (self._masked_middle(inputs[0].shape, where, axis, name)
                  if masked_op is not None else None)
        if middle is not None:
            dims, view, strides = middle
            if isinstance(out, np.ndarray) and np.may_share_memory(out, view):
                raise ValueError("out must not overlap where")

            def run3(*args):  # (x3, r3, threads) or (g3, a3, r3, threads)
                *xs, r3, threads = args
                g3 = xs[0] if len(xs) == 2 else None
                if kind is None:
                    self.kernels.masked_strided(masked_op, xs[-1], g3, view, *strides,
                                                r3.reshape(-1), threads)
                else:
                    self.kernels.half_masked_strided(
                        masked_op, bits(xs[-1]), None if g3 is None else bits(g3), view,
                        *strides, bits(r3).reshape(-1), None, kind, threads)

            return _run_strided(run3, None, inputs, compute, result, dims, out, num_threads)
        mask = MaskRows(where, inputs[0].shape, RowLayout(inputs[0].shape, axis), name)
        if isinstance(out, np.ndarray) and np.may_share_memory(out, mask.view):
            raise ValueError("out must not overlap where")

        def run(*args):
            kernel(*args[:-2], mask, *args[-2:])

        return _run_rows(run, inputs, compute, result, axis, out, num_threads,
                         split_rows=False)

    def _masked_middle(self, shape, where, axis, name):
        """``((outer, C, inner), view, (so, sc, si))`` where a mask over one axis that
        is not the last (inner > 1, at most HALF_STRIDED_CLASSES classes: the
        kernels' scratch) is read in place by three strides (middle_mask); else
        None (the rows path)."""
        layout = RowLayout(shape, axis)
        dims = _middle(layout)
        if (dims is None or dims[2] == 1 or dims[1] > HALF_STRIDED_CLASSES
                or not hasattr(self.kernels, "masked_strided")):
            return None
        mask = middle_mask(where, shape, layout.axes[0], name)
        if mask is None:
            return None
        return dims, mask[0], mask[1:]

    def _masked_rowwise(self, kernel, x, where, axis, out, num_threads, masked_op):
        xh, kind = half_array(x, "x")
        if kind is not None:  # 16-bit rows computed in float32 a row at a time, no copy
            half_masked = self.kernels.half_masked_rows

            def run(x2, mask, r2, threads):
                half_masked(masked_op, bits(x2), None, mask, bits(r2), kind, threads)

            return self._masked(run, (xh,), where, xh.dtype, xh.dtype, axis, out, num_threads,
                                masked_op=masked_op, kind=kind)
        xc, compute, result = as_compute_array(xh, "x")
        return self._masked(kernel, (xc,), where, compute, result, axis, out, num_threads,
                            masked_op=masked_op)

    # -- softmax family ----------------------------------------------------

    def softmax(self, x, axis=-1, *, out=None, where=None, num_threads=None):
        """Softmax over ``axis``: ``exp(x - max) / sum(exp(x - max))``.

        Parameters
        ----------
        x : array_like
            Input of any shape; float32/float64 computed natively; float16 and
            bfloat16 (``ml_dtypes.bfloat16``, or a ``torch.bfloat16`` tensor)
            read and written in 16 bits, computed in float32 and rounded once;
            integers and bool as float64.
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
            to x's shape); an all-True mask gives the unmasked result's bits
            on rows of 256 bytes or more, its values within rounding on
            shorter rows.
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
            r = self._fast_masked(_MASKED_SOFTMAX, x, where, axis, out, num_threads)
            if r is not None:
                return r
            return self._masked_rowwise(self.kernels.masked_softmax_rows, x, where, axis, out,
                                        num_threads, _MASKED_SOFTMAX)
        r = self._fast_rows(_OP_SOFTMAX, x, axis, out, num_threads)
        if r is not None:
            return r
        return self._rowwise(self.kernels.softmax_rows, x, axis, out, num_threads,
                             getattr(self.kernels, "softmax_strided", None), _OP_SOFTMAX)

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
            r = self._fast_masked(_MASKED_LOG_SOFTMAX, x, where, axis, out, num_threads)
            if r is not None:
                return r
            return self._masked_rowwise(self.kernels.masked_log_softmax_rows, x, where, axis,
                                        out, num_threads, _MASKED_LOG_SOFTMAX)
        r = self._fast_rows(_OP_LOG_SOFTMAX, x, axis, out, num_threads)
        if r is not None:
            return r
        return self._rowwise(self.kernels.log_softmax_rows, x, axis, out, num_threads,
                             getattr(self.kernels, "log_softmax_strided", None), _OP_LOG_SOFTMAX)

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
            if not return_sign and b is None:
                r = self._fast_masked(_MASKED_LOGSUMEXP, x, where, axis, None, num_threads)
                if r is not None:
                    return _with_axis(r, axis) if keepdims else r
            return self._logsumexp_masked(x, where, axis, keepdims, b, return_sign,
                                          num_threads)
        if not return_sign and b is None:
            r = self._fast_logsumexp(x, axis, num_threads)
            if r is not None:
                return _with_axis(r, axis) if keepdims else r
        if b is not None:
            return self._logsumexp_scaled(x, b, axis, keepdims, return_sign, num_threads)
        xh, kind = half_array(x, "x")
        if kind is not None:
            layout = RowLayout(xh.shape, axis)
            r = np.empty(layout.n_rows, np.float32)
            dims = self._half_middle(xh, axis)
            if dims is not None:
                outer, n, inner = dims
                self.kernels.half_logsumexp_strided(
                    bits(xh).reshape(dims), r.reshape(outer, inner), kind,
                    _threads_strided(outer, n, inner, xh.itemsize, num_threads))
            else:
                self.kernels.half_logsumexp_rows(
                    bits(layout.rows(xh)), r, kind,
                    _threads_for(layout.n_rows, layout.n, num_threads))
            return _reduction_result(r, layout, keepdims, xh.dtype, return_sign)
        xc, compute, result = as_compute_array(xh, "x")
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
        xh, kind = half_array(x, "x")
        if b is not None:
            # b = 0 drops a term whatever x holds: the mask as factors (b and
            # x are made full-size there anyway)
            w = check_where(where, xh.shape)
            return self._logsumexp_scaled(x, np.where(w, as_compute_array(b, "b")[0], 0), axis,
                                          keepdims, return_sign, num_threads)
        if kind is None:
            xc, compute, result = as_compute_array(xh, "x")
        else:  # 16-bit rows read as they are, the results in float32 rounded once
            xc, compute, result = xh, np.dtype(np.float32), xh.dtype
        layout = RowLayout(xc.shape, axis)
        middle = self._masked_middle(xc.shape, where, axis, "x")
        if middle is not None:  # over one axis that is not the last: x read in place
            (outer, n, inner), view, strides = middle
            r = np.empty(layout.n_rows, compute)
            threads = _threads_strided(outer, n, inner, xc.itemsize, num_threads)
            if kind is None:
                self.kernels.masked_strided(_MASKED_LOGSUMEXP, xc.reshape(outer, n, inner),
                                            None, view, *strides, r, threads)
            else:
                self.kernels.half_masked_strided(
                    _MASKED_LOGSUMEXP, bits(xc).reshape(outer, n, inner), None, view,
                    *strides, None, r, kind, threads)
            return _reduction_result(r, layout, keepdims, result, return_sign)
        mask = MaskRows(where, xc.shape, layout)
        r = np.empty(layout.n_rows, compute)
        threads = _threads_for(layout.n_rows, layout.n, num_threads, False)
        if kind is None:
            self.kernels.masked_logsumexp_rows(layout.rows(xc), mask, r, threads)
        else:
            self.kernels.half_masked_rows(_MASKED_LOGSUMEXP, bits(layout.rows(xc)), None, mask,
                                          r, kind, threads)
        return _reduction_result(r, layout, keepdims, result, return_sign)

    def _logsumexp_scaled(self, x, b, axis, keepdims, return_sign, num_threads):
        """``log|sum(b exp(x))|`` as a difference of two unscaled logsumexps:
        of ``x + log b`` where b > 0 and of ``x + log(-b)`` where b < 0."""
        xc, _, result = as_compute_array(x, "x")
        bc, _, b_result = as_compute_array(b, "b")
        result = promote(result, b_result)
        work = np.dtype(np.float32) if half_kind(result) is not None else result  # 16-bit: float32
        try:
            xc, bc = np.broadcast_arrays(xc.astype(work, copy=False), bc.astype(work, copy=False))
        except ValueError:
            raise ValueError(
                f"b of shape {bc.shape} does not broadcast to x of shape {xc.shape}"
            ) from None
        rows = _scaled_rows(xc, bc, axis)
        if rows is not None:  # the kernel, row by row: no array of x's size
            x2, b2, layout = rows
            r = np.empty(layout.n_rows, work)
            sign = np.empty(layout.n_rows, work)
            self.kernels.logsumexp_scaled_rows(
                x2, b2, r, sign, _threads_for(layout.n_rows, layout.n, num_threads, False))
            shape = layout.kept_shape if keepdims else layout.reduced_shape
            r, sign = r.reshape(shape), sign.reshape(shape)
            if return_sign:
                return r.astype(result)[()], sign.astype(result)[()]
            with np.errstate(invalid="ignore"):
                return np.where(sign < 0, np.nan, r).astype(result)[()]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_b = np.log(np.abs(bc))
            pos = np.where(bc > 0, xc + log_b, -np.inf)
            neg = np.where(bc < 0, xc + log_b, -np.inf)
            # a zero factor drops its term, NaN included (as a masked entry)
            nan = np.isnan(bc) | (np.isnan(xc) & (bc != 0))
            pos[nan] = np.nan
            lp = np.asarray(self.logsumexp(pos, axis, keepdims=keepdims, num_threads=num_threads))
            ln = np.asarray(self.logsumexp(neg, axis, keepdims=keepdims, num_threads=num_threads))
            big, small = np.maximum(lp, ln), np.minimum(lp, ln)
            r = big + np.log1p(-np.exp(small - big))
            # equal parts cancel exactly (log 0 = -inf), but inf - inf is NaN
            r = np.where(lp == ln, np.where(lp == np.inf, np.nan, -np.inf), r)
            sign = np.where(lp > ln, 1.0, np.where(lp < ln, -1.0, 0.0))
            sign = np.where(np.isnan(r), np.nan, sign)
        if return_sign:
            return r.astype(result)[()], sign.astype(result)[()]
        return np.where(sign < 0, np.nan, r.astype(work)).astype(result)[()]

    def _backward(self, kernel, grad_output, output, axis, out, num_threads, where=None,
                  op=None):
        if where is not None:
            r = self._fast_masked(_MASKED_SOFTMAX_BACKWARD if op == _OP_SOFTMAX
                                  else _MASKED_LOG_SOFTMAX_BACKWARD, output, where, axis, out,
                                  num_threads, grad_output)
            if r is not None:
                return r
        gh, g_kind = half_array(grad_output, "grad_output")
        ah, kind = half_array(output, "output")
        if kind is not None and g_kind == kind and where is not None:
            check_same_shape(gh, ah, "grad_output", "output")
            half_masked = self.kernels.half_masked_rows
            masked_op = (_MASKED_SOFTMAX_BACKWARD if op == _OP_SOFTMAX
                         else _MASKED_LOG_SOFTMAX_BACKWARD)

            def run_masked(g2, a2, mask, r2, threads):
                half_masked(masked_op, bits(a2), bits(g2), mask, bits(r2), kind, threads)

            return self._masked(run_masked, (gh, ah), where, ah.dtype, ah.dtype, axis, out,
                                num_threads, "output", masked_op, kind)
        if kind is not None and g_kind == kind:
            check_same_shape(gh, ah, "grad_output", "output")
            dims = self._half_middle(ah, axis)
            if dims is not None:
                half_strided_backward = self.kernels.half_strided_backward

                def run3(g3, a3, r3, threads):
                    half_strided_backward(op, bits(g3), bits(a3), bits(r3), kind, threads)

                return _run_strided(run3, None, (gh, ah), ah.dtype, ah.dtype, dims, out,
                                    num_threads)
            half_backward = self.kernels.half_backward_rows

            def run(g2, a2, r2, threads):
                half_backward(op, bits(g2), bits(a2), bits(r2), kind, threads)

            return _run_rows(run, (gh, ah), ah.dtype, ah.dtype, axis, out, num_threads,
                             split_rows=False)
        g, g_compute, g_result = as_compute_array(gh, "grad_output")
        a, compute, result = as_compute_array(ah, "output")
        check_same_shape(g, a, "grad_output", "output")
        if g_compute != compute or g_result != result:
            # compute in the wider of the two compute dtypes, return the wider result
            compute = promote(g_compute, compute)
            result = promote(g_result, result)
            g = g.astype(compute, copy=False)
            a = a.astype(compute, copy=False)
        if where is not None:
            masked_op = (_MASKED_SOFTMAX_BACKWARD if op == _OP_SOFTMAX
                         else _MASKED_LOG_SOFTMAX_BACKWARD)
            return self._masked(kernel, (g, a), where, compute, result, axis, out, num_threads,
                                "output", masked_op)
        dims = _middle(RowLayout(a.shape, axis))
        if dims is not None:
            # over one axis that is not the last: read in place, no moved copies
            backward_strided = self.kernels.backward_strided

            def run3(g3, a3, r3, threads):
                backward_strided(op, g3, a3, r3, threads)

            return _run_strided(run3, kernel, (g, a), compute, result, dims, out, num_threads)
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
                                  axis, out, num_threads, where, _OP_SOFTMAX)
        r = self._fast_backward(_OP_SOFTMAX, grad_output, output, axis, out, num_threads)
        if r is not None:
            return r
        return self._backward(
            self.kernels.softmax_backward_rows, grad_output, output, axis, out, num_threads,
            op=_OP_SOFTMAX,
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
                                  output, axis, out, num_threads, where, _OP_LOG_SOFTMAX)
        r = self._fast_backward(_OP_LOG_SOFTMAX, grad_output, output, axis, out, num_threads)
        if r is not None:
            return r
        return self._backward(
            self.kernels.log_softmax_backward_rows, grad_output, output, axis, out, num_threads,
            op=_OP_LOG_SOFTMAX,
        )

