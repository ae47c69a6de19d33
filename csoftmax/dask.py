"""csoftmax kernels over dask arrays chunked along rows.

Each chunk is computed by the in-memory csoftmax function, so a chunk must
hold whole rows: the class axis (``axis`` of :func:`softmax` and of
:func:`cross_entropy`) must be a single chunk.  An array chunked
along it is **rechunked** to one chunk there, with a
``dask.array.PerformanceWarning`` (the chunks then hold every class of their
rows: rechunk yourself, e.g. ``x.rechunk({0: "auto", 1: -1})``, to choose
their size and silence the warning).  Targets are rechunked to the logits'
rows without a warning; NumPy targets and weights are accepted.

Everything is lazy.  :func:`cross_entropy` reduces across chunks exactly as
the in-memory function does: every chunk contributes its summed loss, and
``"mean"`` divides the global sum by the global denominator -- the summed
class weight of the non-ignored rows (their number without weights), ``N``
for probability targets, ``nan`` when zero -- not by per-chunk means.
:func:`cross_entropy_with_grad` returns ``(loss, grad)`` computed in one task
per chunk (compute both at once, ``dask.compute(loss, grad)``, so that each
chunk is read once); for ``"mean"`` the chunks' gradients are scaled by the
global denominator, which only needs the targets.

Options (``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``,
dtypes, shapes) are checked when the graph is built; class indices out of
range are found when a chunk is computed: a ``ValueError`` naming the row of
the whole array.

Threads: each chunk runs on ``num_threads`` OpenMP threads (default
:func:`csoftmax.get_num_threads`).  With the threaded scheduler, which already
runs one chunk per core, pass ``num_threads=1`` to avoid oversubscription;
``dask.distributed`` workers set ``OMP_NUM_THREADS=1`` themselves.

This module needs dask (``pip install "csoftmax[dask]"``).
"""

from __future__ import annotations

import re
import warnings

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "csoftmax.dask needs dask, which is not installed: "
        'pip install "csoftmax[dask]" (or "dask[array]")'
    ) from exc

import numpy as np

import csoftmax as _cs
from csoftmax._validation import normalize_axes

__all__ = [
    "cross_entropy",
    "cross_entropy_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "softmax",
]


# ---------------------------------------------------------------------------------------------
# chunks


def _as_dask(x, whole_axes=()):
    """A dask array; non-dask input is chunked "auto" with ``whole_axes`` in one chunk."""
    if isinstance(x, da.Array):
        return x
    x = np.asarray(x)
    return da.from_array(x, chunks={i: (-1 if i in whole_axes else "auto") for i in range(x.ndim)})


def _whole_along(x, axes, what):
    """``x`` with each of ``axes`` in a single chunk (rechunked with a warning)."""
    split = [a for a in axes if len(x.chunks[a]) > 1]
    if not split:
        return x
    warnings.warn(
        f"csoftmax.dask: {what} is chunked along axis {split} (chunks {x.chunks}); every chunk "
        f"must hold whole rows, so it is rechunked to one chunk along that axis. Rechunk it "
        f"yourself, e.g. x.rechunk({{{split[0]}: -1}}), to choose the chunk sizes and silence "
        f"this warning",
        da.PerformanceWarning,
        stacklevel=3,
    )
    return x.rechunk(dict.fromkeys(split, -1))


def _row_chunks(logits):
    rows = logits.chunks[0]
    if any(np.isnan(r) for r in rows):
        raise ValueError(
            "csoftmax.dask: the logits have unknown chunk sizes; call "
            "logits.compute_chunk_sizes() first"
        )
    return rows


# ---------------------------------------------------------------------------------------------
# softmax family


def _result_dtype(fn, dtype, ndim, axis, num_threads):
    """What ``fn`` returns for input of ``dtype`` (its errors for these arguments, raised now)."""
    return np.asarray(fn(np.zeros((1,) * ndim, dtype), axis=axis, num_threads=num_threads)).dtype


# The tasks call csoftmax's functions through module-level functions of this
# module, pickled by reference: a dask.distributed worker calls its own
# csoftmax's functions, on the kernels chosen for its CPU.

def _softmax_block(b, *, axis, num_threads):
    return _cs.softmax(b, axis=axis, num_threads=num_threads)


def _log_softmax_block(b, *, axis, num_threads):
    return _cs.log_softmax(b, axis=axis, num_threads=num_threads)


def _rowwise(fn, x, axis, num_threads):
    x = _as_dask(x, whole_axes=normalize_axes(axis, np.ndim(x), np.shape(x)))
    axes = normalize_axes(axis, x.ndim, x.shape)
    x = _whole_along(x, axes, "x")
    dtype = _result_dtype(fn, x.dtype, x.ndim, axis, num_threads)
    return x, axes, dtype


def softmax(x, axis=-1, *, num_threads=None):
    """Lazy :func:`csoftmax.softmax` of a dask array, chunk by chunk.

    Parameters
    ----------
    x : dask.array.Array or array_like
        Any shape; ``axis`` must be (or is rechunked to) one chunk.
    axis : int, tuple of int or None, default -1
        As for :func:`csoftmax.softmax`.
    num_threads : int, optional
        OpenMP threads of each chunk's call.

    Returns
    -------
    dask.array.Array
        x's shape and chunks, the dtype :func:`csoftmax.softmax` returns.

    Examples
    --------
    >>> import numpy as np, dask.array as da, csoftmax.dask as cd
    >>> x = da.from_array(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), chunks=(1, 3))
    >>> cd.softmax(x).compute().round(4)
    array([[0.09  , 0.2447, 0.6652],
           [0.3333, 0.3333, 0.3333]])
    """
    x, _, dtype = _rowwise(_cs.softmax, x, axis, num_threads)
    return x.map_blocks(_softmax_block, axis=axis, num_threads=num_threads, dtype=dtype,
                        meta=np.empty((0,) * x.ndim, dtype))


def log_softmax(x, axis=-1, *, num_threads=None):
    """Lazy :func:`csoftmax.log_softmax` of a dask array, chunk by chunk.

    Parameters and results as for :func:`softmax`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, csoftmax.dask as cd
    >>> cd.log_softmax(da.zeros((4, 2), chunks=(2, 2))).compute().round(4)
    array([[-0.6931, -0.6931],
           [-0.6931, -0.6931],
           [-0.6931, -0.6931],
           [-0.6931, -0.6931]])
    """
    x, _, dtype = _rowwise(_cs.log_softmax, x, axis, num_threads)
    return x.map_blocks(_log_softmax_block, axis=axis, num_threads=num_threads, dtype=dtype,
                        meta=np.empty((0,) * x.ndim, dtype))


def logsumexp(x, axis=-1, *, num_threads=None):
    """Lazy :func:`csoftmax.logsumexp` of a dask array over whole-chunk axes.

    Parameters
    ----------
    x, axis, num_threads
        As for :func:`softmax`.

    Returns
    -------
    dask.array.Array
        x's shape without ``axis``, x's chunks along the other axes.

    Examples
    --------
    >>> import dask.array as da, csoftmax.dask as cd
    >>> cd.logsumexp(da.zeros((4, 2), chunks=(2, 2))).compute().round(4)
    array([0.6931, 0.6931, 0.6931, 0.6931])
    """
    x, axes, dtype = _rowwise(_cs.logsumexp, x, axis, num_threads)
    kept = x.ndim - len(axes)
    if kept == 0:  # one chunk holds everything
        return da.from_delayed(
            dask.delayed(_lse_block, pure=True)(x, axis=axis, num_threads=num_threads),
            shape=(), dtype=dtype, meta=np.empty((), dtype))
    return x.map_blocks(_lse_block, axis=axis, num_threads=num_threads, drop_axis=axes,
                        dtype=dtype, meta=np.empty((0,) * kept, dtype))


def _lse_block(b, *, axis, num_threads):
    return np.asarray(_cs.logsumexp(b, axis=axis, num_threads=num_threads))


# ---------------------------------------------------------------------------------------------
# cross-entropy

_ROW = re.compile(r"^target\[(\d+)\]")


def _in_rows(fn, start, stop, *args, **kwargs):
    """Call ``fn``, naming the rows of the whole array in a bad-label error."""
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:
        message = _ROW.sub(lambda m: f"target[{start + int(m.group(1))}]", str(exc))
        raise ValueError(f"{message} (in the chunk of rows {start}:{stop})") from exc


class _Rows:
    """N-D logits (and a target) viewed lazily as ``(positions, classes)`` rows with the
    class ``axis`` moved last (dask moves it chunk by chunk), and the way back."""

    def __init__(self, logits, target, axis):
        logits = _as_dask(logits, whole_axes=normalize_axes(axis, np.ndim(logits),
                                                            np.shape(logits)))
        (self.axis,) = normalize_axes(axis, logits.ndim, logits.shape)
        self.trivial = logits.ndim == 2 and self.axis == 1
        if self.trivial:
            self.logits, self.target = logits, target
            return
        logits = _whole_along(logits, (self.axis,), "logits")
        moved = da.moveaxis(logits, self.axis, -1)
        self.positions, self.c = moved.shape[:-1], moved.shape[-1]
        self.logits = moved.reshape(-1, self.c)
        if np.ndim(target) == logits.ndim:  # probabilities: like the logits
            t = da.moveaxis(_as_dask(target), self.axis, -1)
            self.target = t.reshape(-1, self.c)
        elif np.shape(target) == self.positions:
            self.target = _as_dask(target).reshape(-1)
        else:
            raise ValueError(
                f"csoftmax.dask: target has shape {np.shape(target)}; expected "
                f"{self.positions} class indices or {logits.shape} probabilities for logits "
                f"of shape {logits.shape} (class axis {self.axis})")

    def loss(self, loss):
        return loss if self.trivial else loss.reshape(self.positions)

    def grad(self, grad):
        if self.trivial:
            return grad
        return da.moveaxis(grad.reshape(self.positions + (self.c,)), -1, self.axis)


class _Problem:
    """The logits and target aligned by rows, the options checked, the result dtype known."""

    def __init__(self, logits, target, weight, ignore_index, reduction, label_smoothing,
                 num_threads, z_loss=0.0, softcap=None):
        logits = _as_dask(logits, whole_axes=(1,))
        if logits.ndim != 2:
            raise ValueError(
                f"csoftmax.dask: logits must be 2-D (N, C), got shape {logits.shape}")
        logits = _whole_along(logits, (1,), "logits")
        rows = _row_chunks(logits)
        n, c = logits.shape
        t_shape = np.shape(target)
        if t_shape not in ((n,), (n, c)):
            raise ValueError(
                f"csoftmax.dask: target has shape {t_shape}; expected ({n},) class indices or "
                f"{(n, c)} probabilities for logits of shape {(n, c)}")
        self.labels = len(t_shape) == 1
        chunks = (rows,) if self.labels else (rows, (c,))
        if isinstance(target, da.Array):
            target = target.rechunk(chunks) if target.chunks != chunks else target
        else:
            target = da.from_array(np.asarray(target), chunks=chunks)
        self.weight = None if weight is None else np.asarray(weight)
        self.options = dict(weight=self.weight, ignore_index=ignore_index,
                            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        self.reduction = reduction
        self.num_threads = num_threads
        # every option, shape and dtype rule of csoftmax, checked now on an empty chunk
        empty = _cs.cross_entropy(np.empty((0, c), logits.dtype),
                                  np.empty((0,) + t_shape[1:], target.dtype),
                                  reduction=reduction, num_threads=num_threads, **self.options)
        self.dtype = np.asarray(empty).dtype
        self.logits, self.target, self.n, self.c = logits, target, n, c
        self.bounds = np.concatenate([[0], np.cumsum(rows)]).astype(int).tolist()
        # "mean" divides the z-loss by the counted rows, the rest by their summed
        # weight: with weights the two are reduced apart
        self.split_z = (reduction == "mean" and self.weight is not None and self.labels
                        and float(z_loss) != 0.0)

    def starts(self):
        return self.bounds[:-1], self.bounds[1:]

    # -- the global denominator of "mean" --------------------------------------------------

    def total(self, weighted=True):
        """A 0-d float64 dask array: the summed weight of the counted rows (N for
        probs; their number with ``weighted=False``)."""
        if not self.labels:
            return da.from_array(np.float64(self.n))
        starts, _ = self.starts()
        parts = da.blockwise(
            _count_block, "i", self.target, "i", da.from_array(np.array(starts), chunks=1), "i",
            weight=self.weight if weighted else None,
            ignore_index=self.options["ignore_index"], n_classes=self.c,
            adjust_chunks={"i": 1}, dtype=np.float64, concatenate=True, align_arrays=False,
            meta=np.empty((0,), np.float64))
        return parts.sum()

    def _target_index(self):
        return "i" if self.labels else "ij"


def _count_block(t, start, *, weight, ignore_index, n_classes):
    """The counted weight of one chunk of class indices (its "mean" denominator)."""
    start = int(start[0])
    t = t.astype(np.int64, copy=False)
    counted = t != ignore_index
    labels = t[counted]
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        row = int(np.flatnonzero(counted)[np.argmax(bad)])
        raise ValueError(
            f"target[{start + row}] = {int(t[row])} is not a class index in [0, {n_classes}) "
            f"nor ignore_index ({ignore_index}) (in the chunk of rows {start}:{start + len(t)})")
    if weight is None:
        return np.array([labels.size], np.float64)
    return np.array([np.add.reduce(weight.astype(np.float64)[labels])], np.float64)


def _loss_block(x, t, start, stop, *, reduction, options, num_threads, split_z=False):
    start, stop = int(start[0]), int(stop[0])  # one-element blocks
    if split_z:  # [the chunk's summed loss without z-loss, its summed z-loss]
        r = _in_rows(_cs.cross_entropy, start, stop, x, t, reduction="sum",
                     num_threads=num_threads, return_z_loss=True, **options)
        return np.array([float(r.loss) - float(r.z_loss), float(r.z_loss)], np.float64)
    loss = _in_rows(_cs.cross_entropy, start, stop, x, t, reduction=reduction,
                    num_threads=num_threads, **options)
    return loss if reduction == "none" else np.array([loss], np.float64)


def _mean_scale(grad, t, total, options):
    """grad times 1 / total: as in memory, nan on counted rows for total 0."""
    if total != 0.0:
        grad *= grad.dtype.type(1.0 / total)
    else:  # ignored rows stay 0
        counted = np.ones(len(grad), bool) if t.ndim == 2 else t != options["ignore_index"]
        grad[counted] = np.nan
    return grad


def _grad_block(x, t, total, start, stop, *, reduction, options, num_threads, count=None):
    """(row losses, or the chunk's summed loss; gradient) of one chunk.  count:
    the counted rows when the z-loss of a weighted "mean" is reduced apart
    (then the loss is [summed loss without z-loss, summed z-loss])."""
    if reduction == "none":
        return _in_rows(_cs.cross_entropy_with_grad, start, stop, x, t, reduction="none",
                        num_threads=num_threads, **options)
    if count is not None:
        # the z-loss gradient is the difference of two gradients of the chunk
        plain = dict(options, z_loss=0.0)
        r = _in_rows(_cs.cross_entropy_with_grad, start, stop, x, t, reduction="sum",
                     num_threads=num_threads, return_z_loss=True, **options)
        _, g0 = _in_rows(_cs.cross_entropy_with_grad, start, stop, x, t, reduction="sum",
                         num_threads=num_threads, **plain)
        gz = r.grad - g0
        grad = _mean_scale(g0, t, total, options) + _mean_scale(gz, t, count, options)
        return np.array([float(r.loss) - float(r.z_loss), float(r.z_loss)]), grad
    loss, grad = _in_rows(_cs.cross_entropy_with_grad, start, stop, x, t, reduction="sum",
                          num_threads=num_threads, **options)
    if reduction == "mean":
        grad = _mean_scale(grad, t, total, options)
    return np.float64(loss), grad


def _finish(parts, total, dtype, count=None):
    """The loss from the chunks' sums: ``sum`` (total None) or ``sum / total``;
    with count, parts are pairs [loss without z-loss, z-loss], the z-loss
    divided by count."""
    if count is not None:
        p = np.asarray(parts, np.float64).reshape(-1, 2)
        total, count = float(total), float(count)
        s = float(np.add.reduce(p[:, 0]))
        z = float(np.add.reduce(p[:, 1]))
        s = s / total if total != 0.0 else float("nan")
        z = z / count if count != 0.0 else float("nan")
        return np.asarray(s + z, dtype)
    s = float(np.add.reduce(np.asarray(parts, np.float64)))
    if total is not None:
        total = float(total)
        s = s / total if total != 0.0 else float("nan")
    return np.asarray(s, dtype)


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                  num_threads=None):
    """Lazy :func:`csoftmax.cross_entropy` over logits chunked along rows.

    Parameters
    ----------
    logits : dask.array.Array or array_like, shape (N, C) or N-D
        Chunked along rows; the class axis must be (or is rechunked to) one chunk.
    target : dask.array.Array or array_like
        Class indices (N,) or probabilities (N, C), rechunked to the logits' rows
        (N-D logits: the logits' shape without ``axis``, or the logits' shape).
    axis : int, default -1
        The class axis.  N-D logits are computed as the rows of their positions
        (``moveaxis`` and ``reshape``, lazily); a bad label is then named by
        its flat position.
    weight, ignore_index, reduction, label_smoothing, z_loss, softcap, num_threads
        As for :func:`csoftmax.cross_entropy` (``num_threads`` per chunk; the
        z-loss of a weighted "mean" divided by the global count of counted
        rows).  The ``return_*`` flags are not offered here.

    Returns
    -------
    dask.array.Array
        0-d for "mean" and "sum" (reduced over all chunks: "mean" divides the
        global sum by the global denominator), the target's shape for "none";
        the logits' dtype.

    Examples
    --------
    >>> import numpy as np, dask.array as da, csoftmax, csoftmax.dask as cd
    >>> x = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    >>> t = np.array([0, 2, -100])
    >>> w = np.array([1.0, 2.0, 3.0])
    >>> loss = cd.cross_entropy(da.from_array(x, chunks=(2, 3)), t, weight=w)
    >>> bool(np.isclose(loss.compute(), csoftmax.cross_entropy(x, t, weight=w)))
    True
    """
    rows = _Rows(logits, target, axis)
    p = _Problem(rows.logits, rows.target, weight, ignore_index, reduction, label_smoothing,
                 num_threads, z_loss, softcap)
    starts, stops = p.starts()
    kwargs = dict(reduction="none" if reduction == "none" else "sum", options=p.options,
                  num_threads=num_threads, split_z=p.split_z)
    start_a = da.from_array(np.array(starts), chunks=1)
    stop_a = da.from_array(np.array(stops), chunks=1)
    if reduction == "none":
        return rows.loss(da.blockwise(
            _loss_block, "i", p.logits, "ij", p.target, p._target_index(), start_a, "i",
            stop_a, "i", dtype=p.dtype, concatenate=True, align_arrays=False,
            meta=np.empty((0,), p.dtype),
            **kwargs))
    sums = da.blockwise(
        _loss_block, "i", p.logits, "ij", p.target, p._target_index(), start_a, "i", stop_a, "i",
        adjust_chunks={"i": 2 if p.split_z else 1}, dtype=np.float64, concatenate=True,
        align_arrays=False, meta=np.empty((0,), np.float64), **kwargs)
    # the chunks' sums reduced by dask's own tree, then finished as an array task: one
    # delayed task over all of them made the scheduler compute every logits chunk before
    # the first loss block (a rechunked (2**18, 513) float32 input: 665 MB peak against
    # 216 MB; the logits are 513 MB)
    reduced = sums.reshape(-1, 2).sum(axis=0) if p.split_z else sums.sum(keepdims=True)
    finals = [a for a in (p.total() if reduction == "mean" else None,
                          p.total(weighted=False) if p.split_z else None) if a is not None]
    return da.blockwise(_finish_reduced, "", reduced, "i", *(x for a in finals for x in (a, "")),
                        dtype=p.dtype, concatenate=True, meta=np.empty((), p.dtype),
                        dtype_out=p.dtype, n_finals=len(finals))


def _finish_reduced(parts, *finals, dtype_out, n_finals):
    """_finish of the tree-reduced sums: finals are the "mean" denominator and,
    for a weighted "mean" with z-loss, the count of counted rows."""
    total = finals[0] if n_finals else None
    count = finals[1] if n_finals > 1 else None
    return _finish(parts, total, dtype_out, count)


def cross_entropy_with_grad(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                            reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                            num_threads=None):
    """Lazy :func:`csoftmax.cross_entropy_with_grad`: loss and gradient, one task per chunk.

    Parameters
    ----------
    logits, target, axis, weight, ignore_index, reduction, label_smoothing
        As for :func:`cross_entropy`.
    z_loss, softcap, num_threads
        As for :func:`cross_entropy` (a weighted "mean" with z-loss computes
        each chunk's gradient twice, to scale its z-loss part apart).

    Returns
    -------
    loss : dask.array.Array
        As :func:`cross_entropy` returns it.
    grad : dask.array.Array
        ``d loss / d logits``: the logits' shape, row chunks and dtype.  For
        "mean" every chunk is scaled by the global denominator.

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da, csoftmax.dask as cd
    >>> x = da.zeros((4, 2), chunks=(2, 2))
    >>> loss, grad = cd.cross_entropy_with_grad(x, np.array([0, 1, 1, 1]))
    >>> loss, grad = dask.compute(loss, grad)
    >>> float(loss.round(4)), grad
    (0.6931, array([[-0.125,  0.125],
           [ 0.125, -0.125],
           [ 0.125, -0.125],
           [ 0.125, -0.125]]))
    """
    rows = _Rows(logits, target, axis)
    p = _Problem(rows.logits, rows.target, weight, ignore_index, reduction, label_smoothing,
                 num_threads, z_loss, softcap)
    total = p.total() if reduction == "mean" else None
    total_d = None if total is None else total.to_delayed(optimize_graph=False)[()]
    count_d = None
    if p.split_z:
        count_d = p.total(weighted=False).to_delayed(optimize_graph=False)[()]
    x_blocks = p.logits.to_delayed(optimize_graph=False).ravel()
    t_blocks = p.target.to_delayed(optimize_graph=False).ravel()
    block = dask.delayed(_grad_block, pure=True, nout=2)
    grads, parts = [], []
    for xb, tb, start, stop in zip(x_blocks, t_blocks, *p.starts()):
        loss_d, grad_d = block(xb, tb, total_d, start, stop, reduction=reduction,
                               options=p.options, num_threads=num_threads, count=count_d)
        grads.append(da.from_delayed(grad_d, shape=(stop - start, p.c), dtype=p.dtype,
                                     meta=np.empty((0, 0), p.dtype)))
        parts.append(da.from_delayed(loss_d, shape=(stop - start,), dtype=p.dtype,
                                     meta=np.empty((0,), p.dtype))
                     if reduction == "none" else loss_d)
    if not grads:  # no rows
        grad = da.zeros((0, p.c), dtype=p.dtype)
        empty_sum = np.zeros(2) if p.split_z else 0.0
        parts = [np.empty(0, p.dtype) if reduction == "none" else empty_sum]
    else:
        grad = da.concatenate(grads, axis=0)
    if reduction == "none":
        return rows.loss(da.concatenate([da.asarray(q) for q in parts])), rows.grad(grad)
    loss = dask.delayed(_finish, pure=True)(parts, total_d, p.dtype, count_d)
    return (da.from_delayed(loss, shape=(), dtype=p.dtype, meta=np.empty((), p.dtype)),
            rows.grad(grad))


# ---------------------------------------------------------------------------------------------
# linear cross-entropy: rows of input (and target) in chunks, the weight in every task


def _linear_block(x, t, w, b, total, count, start, stop, *, with_grad, reduction, options,
                  num_threads, chunk_size):
    """One chunk of rows through :func:`csoftmax.linear_cross_entropy(_with_grad)` with the
    "sum" reduction ("none" stays): (the chunk's summed loss or its row losses[, grad_input
    scaled by the global "mean" factor, the summed grad_linear_weight, grad_linear_bias])."""
    from csoftmax import _linear

    options = dict(options)
    mean = reduction == "mean"
    if mean and count is not None:
        # a weighted "mean": the z-loss divided by the counted rows, the rest by their
        # summed weight -- as in memory, through z_loss * total / count per chunk
        total_f, count_f = float(total), float(count)
        if total_f != 0.0 and count_f != 0.0:
            options["z_loss"] = options["z_loss"] * total_f / count_f
    r = _in_rows(_linear.call, start, stop, None, x, w, t, with_grad, linear_bias=b,
                 reduction="none" if reduction == "none" else "sum",
                 num_threads=num_threads, chunk_size=chunk_size, **options)
    if not with_grad:
        return r if reduction == "none" else np.float64(r)
    loss, gx, gw, gb = r
    if mean:
        gx = _mean_scale(gx, t, float(total), options)
    # the weight gradients are summed over chunks: in float32 at least
    acc = np.promote_types(gw.dtype, np.float32)
    gw = gw.astype(acc, copy=False)
    gb = None if gb is None else gb.astype(acc, copy=False)
    return (loss if reduction == "none" else np.float64(loss)), gx, gw, gb


def _add_pair(a, b):
    """a + b, into a (each partial sum of the tree has one consumer); None stays None."""
    if a is None:
        return None
    np.add(a, b, out=a)
    return a


def _tree_sum(parts):
    """A pairwise tree of delayed additions over delayed arrays."""
    add = dask.delayed(_add_pair, pure=True)
    while len(parts) > 1:
        pairs = [add(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def _scale_sum(s, total, reduction, dtype, n_kept):
    """The summed weight gradient times the "mean" factor, in the result dtype (as in
    memory: left as it is, all zero, when no row is counted)."""
    if s is None:
        return None
    if reduction == "mean" and float(n_kept):
        total = float(total)
        s = s * (1.0 / total) if total != 0.0 else np.full_like(s, np.nan)
    return s.astype(dtype, copy=False)


class _LinearProblem:
    """input, target and the weights of a linear cross-entropy aligned by rows and checked."""

    def __init__(self, input, linear_weight, target, linear_bias, weight, ignore_index,
                 reduction, label_smoothing, z_loss, softcap, num_threads, chunk_size):
        x = _as_dask(input, whole_axes=(1,))
        w_shape = np.shape(linear_weight)
        if x.ndim != 2 or len(w_shape) != 2:
            raise ValueError(
                f"csoftmax.dask.linear_cross_entropy: input must be (N, D) and linear_weight "
                f"(V, D), got shapes {x.shape} and {w_shape}")
        if x.shape[1] != w_shape[1]:
            raise ValueError(
                f"input of shape {x.shape} and linear_weight of shape {w_shape} differ in "
                f"their last dimension (the features)")
        x = _whole_along(x, (1,), "input")
        rows = _row_chunks(x)
        n, v = x.shape[0], w_shape[0]
        t_shape = np.shape(target)
        if t_shape not in ((n,), (n, v)):
            raise ValueError(
                f"csoftmax.dask: target has shape {t_shape}; expected ({n},) class indices or "
                f"{(n, v)} probabilities for input of shape {x.shape} and linear_weight of "
                f"shape {w_shape}")
        self.labels = len(t_shape) == 1
        chunks = (rows,) if self.labels else (rows, (v,))
        if isinstance(target, da.Array):
            target = target.rechunk(chunks) if target.chunks != chunks else target
        else:
            target = da.from_array(np.asarray(target), chunks=chunks)
        self.options = dict(weight=None if weight is None else np.asarray(weight),
                            ignore_index=ignore_index, label_smoothing=label_smoothing,
                            z_loss=z_loss, softcap=softcap)
        # every option, dtype and shape rule of csoftmax, checked now on a stand-in of no
        # rows and one feature (the features were compared above)
        w_dtype = linear_weight.dtype if isinstance(linear_weight, da.Array) \
            else np.asarray(linear_weight).dtype
        bias = linear_bias
        if bias is not None:
            b_dtype = bias.dtype if isinstance(bias, da.Array) else np.asarray(bias).dtype
            bias = np.empty(np.shape(bias), b_dtype)
        empty = _cs.linear_cross_entropy(
            np.empty((0, 1), x.dtype), np.empty((v, 1), w_dtype),
            np.empty((0,) + t_shape[1:], target.dtype), linear_bias=bias,
            reduction=reduction, num_threads=num_threads, chunk_size=chunk_size,
            **self.options)
        self.dtype = np.asarray(empty).dtype
        self.w = self._delayed(linear_weight)
        self.b = None if linear_bias is None else self._delayed(linear_bias)
        self.x, self.target, self.n, self.v = x, target, n, v
        self.bounds = np.concatenate([[0], np.cumsum(rows)]).astype(int).tolist()
        self.reduction = reduction
        self.split_z = (reduction == "mean" and weight is not None and self.labels
                        and float(z_loss) != 0.0)

    @staticmethod
    def _delayed(a):
        """One delayed object (shared by every task) holding the whole array."""
        if isinstance(a, da.Array):
            return a.rechunk(-1).to_delayed(optimize_graph=False).ravel()[0]
        return dask.delayed(np.asarray(a), pure=True)

    def total(self, weighted=True):
        if not self.labels:
            return np.float64(self.n)
        starts = self.bounds[:-1]
        parts = da.blockwise(
            _count_block, "i", self.target, "i", da.from_array(np.array(starts), chunks=1), "i",
            weight=self.options["weight"] if weighted else None,
            ignore_index=self.options["ignore_index"], n_classes=self.v,
            adjust_chunks={"i": 1}, dtype=np.float64, concatenate=True, align_arrays=False,
            meta=np.empty((0,), np.float64))
        return parts.sum().to_delayed(optimize_graph=False)[()]

    def blocks(self, with_grad, num_threads, chunk_size):
        """The delayed results of every chunk of rows, the "mean" denominator and the
        number of counted rows."""
        total = count = None
        if self.reduction == "mean":
            total = count = self.total()
            if self.labels and self.options["weight"] is not None:
                count = self.total(weighted=False)
        x_blocks = self.x.to_delayed(optimize_graph=False).ravel()
        t_blocks = self.target.to_delayed(optimize_graph=False).ravel()
        block = dask.delayed(_linear_block, pure=True, nout=4 if with_grad else None)
        z_count = count if self.split_z else None
        out = [block(xb, tb, self.w, self.b, total, z_count, start, stop, with_grad=with_grad,
                     reduction=self.reduction, options=self.options,
                     num_threads=num_threads, chunk_size=chunk_size)
               for xb, tb, start, stop in zip(x_blocks, t_blocks, self.bounds[:-1],
                                              self.bounds[1:])]
        return out, total, count

    def loss(self, parts, total):
        if self.reduction == "none":
            return da.concatenate([
                da.from_delayed(p, shape=(stop - start,), dtype=self.dtype,
                                meta=np.empty((0,), self.dtype))
                for p, start, stop in zip(parts, self.bounds[:-1], self.bounds[1:])])
        loss = dask.delayed(_finish, pure=True)(parts, total, self.dtype)
        return da.from_delayed(loss, shape=(), dtype=self.dtype, meta=np.empty((), self.dtype))


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                         softcap=None, num_threads=None, chunk_size=None):
    """Lazy :func:`csoftmax.linear_cross_entropy` over ``input`` chunked along rows.

    Each chunk of rows of ``input`` (and of ``target``) is one task holding
    the whole ``linear_weight`` (one object in the graph, shared by the
    tasks); within a task csoftmax's own chunks bound the logits' memory.
    "mean" divides the global sum by the global denominator (as
    :func:`cross_entropy` here).

    Parameters
    ----------
    input : dask.array.Array or array_like, shape (N, D)
        Chunked along rows; the features must be (or are rechunked to) one chunk.
    linear_weight : array_like or dask.array.Array, shape (V, D)
        Given whole to every task (a dask array is rechunked to one chunk).
        K-dimensional weights are not offered here.
    target : dask.array.Array or array_like
        Class indices (N,) or probabilities (N, V), rechunked to the input's rows.
    linear_bias : array_like or dask.array.Array, shape (V,), optional
    weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As for :func:`csoftmax.linear_cross_entropy` (the ``return_*`` flags
        are not offered here).
    num_threads, chunk_size
        Per task: the threads of its GEMMs and kernels, its rows per
        csoftmax chunk.  With the threaded scheduler, which already runs a
        task per core, pass ``num_threads=1``.

    Returns
    -------
    dask.array.Array
        0-d for "mean" and "sum", (N,) for "none"; the logits' dtype.

    Examples
    --------
    >>> import numpy as np, dask.array as da, csoftmax, csoftmax.dask as cd
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((6, 3)), rng.standard_normal((4, 3))
    >>> t = np.array([0, 1, 2, 3, -100, 1])
    >>> loss = cd.linear_cross_entropy(da.from_array(x, chunks=(2, 3)), W, t)
    >>> bool(np.isclose(loss.compute(), csoftmax.linear_cross_entropy(x, W, t)))
    True
    """
    p = _LinearProblem(input, linear_weight, target, linear_bias, weight, ignore_index,
                       reduction, label_smoothing, z_loss, softcap, num_threads, chunk_size)
    parts, total, _ = p.blocks(False, num_threads, chunk_size)
    return p.loss(parts, total)


def linear_cross_entropy_with_grad(input, linear_weight, target, *, linear_bias=None,
                                   weight=None, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.0, z_loss=0.0, softcap=None,
                                   num_threads=None, chunk_size=None):
    """Lazy :func:`csoftmax.linear_cross_entropy_with_grad`: one task per chunk of rows.

    Each task computes its rows' loss, their ``grad_input`` rows (scaled by
    the global "mean" factor) and its summand of ``grad_linear_weight`` and
    ``grad_linear_bias``; those are summed by a pairwise tree of tasks and
    scaled once.  Memory: one ``linear_weight``-sized partial sum per task
    that has run and not yet been added.  Compute the four results together
    (``dask.compute(...)``) so that each chunk runs once.

    Parameters
    ----------
    input, linear_weight, target, linear_bias, weight, ignore_index, reduction
    label_smoothing, z_loss, softcap, num_threads, chunk_size
        As for :func:`linear_cross_entropy`.

    Returns
    -------
    loss : dask.array.Array
        As :func:`linear_cross_entropy` returns it.
    grad_input : dask.array.Array
        (N, D), the input's row chunks.
    grad_linear_weight : dask.array.Array
        (V, D), one chunk.
    grad_linear_bias : dask.array.Array or None
        (V,), one chunk; None without a bias.

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da, csoftmax, csoftmax.dask as cd
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((6, 3)), rng.standard_normal((4, 3))
    >>> t = np.array([0, 1, 2, 3, -100, 1])
    >>> lazy = cd.linear_cross_entropy_with_grad(da.from_array(x, chunks=(2, 3)), W, t)
    >>> loss, gx, gW, gb = dask.compute(*lazy)
    >>> want = csoftmax.linear_cross_entropy_with_grad(x, W, t)
    >>> bool(np.allclose(gx, want[1]) and np.allclose(gW, want[2])), gb
    (True, None)
    """
    p = _LinearProblem(input, linear_weight, target, linear_bias, weight, ignore_index,
                       reduction, label_smoothing, z_loss, softcap, num_threads, chunk_size)
    blocks, total, count = p.blocks(True, num_threads, chunk_size)
    d = p.x.shape[1]
    losses = [blk[0] for blk in blocks]
    grad_input = da.concatenate([
        da.from_delayed(blk[1], shape=(stop - start, d), dtype=p.dtype,
                        meta=np.empty((0, 0), p.dtype))
        for blk, start, stop in zip(blocks, p.bounds[:-1], p.bounds[1:])], axis=0)
    scale = dask.delayed(_scale_sum, pure=True)
    gw = scale(_tree_sum([blk[2] for blk in blocks]), total, reduction, p.dtype, count)
    grad_w = da.from_delayed(gw, shape=(p.v, d), dtype=p.dtype, meta=np.empty((0, 0), p.dtype))
    grad_b = None
    if linear_bias is not None:
        gb = scale(_tree_sum([blk[3] for blk in blocks]), total, reduction, p.dtype, count)
        grad_b = da.from_delayed(gb, shape=(p.v,), dtype=p.dtype, meta=np.empty((0,), p.dtype))
    return p.loss(losses, total), grad_input, grad_w, grad_b
