"""The strategies of :mod:`csoftmax._linear` over validated arguments: row
chunks (:func:`run_chunked`), vocabulary slices for a loss alone
(:func:`run_vocab_slices`), and the whole logits for K-dimensional weights
(:func:`run_materialised`).  The chunk sizes are explained in
:mod:`csoftmax._linear`'s docstring."""

from __future__ import annotations

import math

import numpy as np

from ._linear_blas import Gemms
from ._linear_results import Extras, as_results, cast_grads, divide, finish_loss, mean_denominator

#: Bytes of logits in one chunk by default (see the module docstring).
CHUNK_BYTES = 64 << 20
#: The fewest rows of a default chunk, memory bound aside (the GEMMs' depth).
MIN_CHUNK_ROWS = 512
#: Logits up to this size may be one chunk; larger ones go in chunks of at
#: most N / 5 rows (at least FEWEST_ROWS), within a fifth of the logits.
WHOLE_BYTES = 8 << 20
FEWEST_ROWS = 64
#: The fewest classes of a vocabulary slice (see run_vocab_slices).
MIN_SLICE = 2048
#: Threads of the slice fold (see run_vocab_slices).
SLICE_FOLD_THREADS = 1


def default_chunk_rows(n_rows, n_classes, itemsize):
    """The rows of a default chunk (see the module docstring)."""
    if n_rows <= 1:
        return 1
    rows = max(CHUNK_BYTES // max(1, n_classes * itemsize), MIN_CHUNK_ROWS)
    if n_rows * n_classes * itemsize > WHOLE_BYTES:
        rows = min(rows, max(-(-n_rows // 5), FEWEST_ROWS))
    rows = max(1, min(rows, n_rows))
    chunks = -(-n_rows // rows)
    return -(-n_rows // chunks)  # equal chunks, none larger than ``rows``


def run_chunked(frontend, args, with_grad, n_threads, row_scale=None):
    x, w, b = args.x, args.w, args.b
    n, d = x.shape
    v = args.n_classes
    compute = args.compute
    if args.any_ignored is False:
        kept, all_kept = None, True
    else:
        kept = np.flatnonzero(args.labels != args.ignore_index)
        all_kept = kept.size == n
    n_kept = n if kept is None else kept.size
    denominator = mean_denominator(args, kept)
    extras = Extras(args, n, n_kept, denominator)
    rows = args.chunk_size or default_chunk_rows(n_kept, v, compute.itemsize)
    rows = max(1, min(rows, n_kept))
    if not with_grad and _slices_apply(args, rows, n_kept):
        return run_vocab_slices(frontend, args, None if all_kept else kept, n_kept,
                                 rows * v, denominator, extras)
    # the cross-entropy of a chunk on one thread: a few per cent of the time, and
    # an OpenMP team woken between two BLAS calls fights the BLAS's threads
    options = dict(weight=args.weight, ignore_index=args.ignore_index,
                   label_smoothing=args.label_smoothing, num_threads=1,
                   **extras.options)
    scale = 1.0
    if args.reduction == "mean":  # the gradients' factor, applied to the small results
        scale = compute.type(divide(1.0, denominator))
    chunk_reduction = "none" if args.reduction == "none" else "sum"
    row_loss = np.zeros(n, compute) if args.reduction == "none" else None
    total_loss = 0.0
    buf = np.empty((rows, v), compute) if n_kept else None
    xbuf = None if all_kept or not n_kept else np.empty((rows, d), compute)
    if with_grad:
        grad_x = np.zeros((n, d), compute) if not all_kept else np.empty((n, d), compute)
        # written by the first chunk's product (see Gemms.add_grad_weight)
        grad_w = np.empty((v, d), compute) if n_kept else np.zeros((v, d), compute)
        grad_b = None if b is None else np.zeros(v, np.float64)
        ones = None if b is None else np.ones(rows, compute)
    gemms = Gemms(compute, rows)
    for start in range(0, n_kept, rows):
        stop = min(start + rows, n_kept)
        m = stop - start
        if all_kept:
            x_c = x[start:stop]
            sel = slice(start, stop)
        else:
            sel = kept[start:stop]
            # mode="clip": with out=, "raise" buffers a copy first (the rows are valid)
            x_c = np.take(x, sel, axis=0, out=xbuf[:m], mode="clip")
        logits = buf[:m]
        gemms.logits(x_c, w, logits)
        if b is not None:
            np.add(logits, b, out=logits)
        t_c = args.labels[sel] if args.labels is not None else args.probs[sel]
        if with_grad:
            r = frontend.cross_entropy_with_grad(
                logits, t_c, reduction=chunk_reduction, out=logits, **options)
            loss_c = extras.add(r[0], r[2:], sel, m)
            if row_scale is not None:
                np.multiply(logits, row_scale[sel][:, None], out=logits)
            gemms.grad_input(logits, w, grad_x[start:stop] if all_kept else (grad_x, sel),
                             scale)
            gemms.add_grad_weight(grad_w, logits, x_c, start == 0)
            if grad_b is not None:
                gemms.add_column_sums(grad_b, logits, ones[:m])
        else:
            r = frontend.cross_entropy(logits, t_c, reduction=chunk_reduction, **options)
            loss_c = extras.add(r[0], r[1:], sel, m) if extras.flagged else r
        if row_loss is not None:
            row_loss[sel] = loss_c
        else:
            total_loss += float(loss_c)
    loss = extras.finish(finish_loss(args, total_loss, row_loss, denominator))
    if not with_grad:
        return loss
    if scale != 1.0 and n_kept:
        grad_w *= scale
        if grad_b is not None:
            grad_b *= scale
    if grad_b is not None:
        grad_b = grad_b.astype(compute)
    gx, gw, gb = cast_grads(args, grad_x, grad_w, grad_b)
    return loss, gx, gw, gb


def _slices_apply(args, rows, n_kept):
    """Whether a loss-only call goes by vocabulary slices (see
    :func:`run_vocab_slices`): class-index targets, more than one row
    chunk, and a vocabulary of at least two slices of :data:`MIN_SLICE`
    classes."""
    return args.labels is not None and n_kept > rows and args.n_classes >= 2 * MIN_SLICE


def slice_shape(n_kept, n_classes, elements, gathered=0):
    """(rows, classes) of a block: as many rows as leave slices of
    :data:`MIN_SLICE` classes, then equal parts (a slice may then be
    narrower, down to about ``MIN_SLICE / 2``).  The block's logits, and
    with ``gathered`` (the input's features, where the kept rows are
    gathered into a buffer: rows are ignored) that buffer, stay within what a
    row chunk holds: ``elements`` logits and ``elements / n_classes``
    gathered rows."""
    budget = elements + elements // n_classes * gathered
    rows = max(1, min(n_kept, budget // (MIN_SLICE + gathered)))
    rows = -(-n_kept // -(-n_kept // rows))
    width = max(1, min(n_classes, (budget - rows * gathered) // rows))
    width = -(-n_classes // -(-n_classes // width))
    return rows, width


def run_vocab_slices(frontend, args, kept, n_kept, elements, denominator, extras):
    """The loss of ``args`` by blocks of rows x a slice of the vocabulary: per
    block ``L = x_r @ W[v0:v1].T`` (one GEMM; the bias and the soft cap
    applied by the kernel), folded into each row's running max and exp-sum
    by the kernel ``logsumexp_slice_fold``, which also picks the target's
    logit and, with label smoothing, sums ``w_k x_k``.  Then per row, in
    double, the whole-row kernel's formula with ``lse = log(s)`` and the
    logits shifted by the row max ``m``::

        loss = alpha w_t (lse - (x_t - m)) [+ beta (W lse - (sum_k w_k x_k - m W))]
               [+ z (m + lse)^2]

    Why: a GEMM over a chunk of rows packs the whole weight again, one over
    a slice packs its part once (2048 x 2048 x 128256 in 5 parts: 4.19 s by
    rows, 3.87 s by slices, 3.70 s whole).  The block holds at most
    ``elements`` logits (what a row chunk would) and, where rows are
    ignored, the gathered kept rows of the input stay within a row chunk's
    share too (see :func:`slice_shape`); beyond them, four float64 values
    per row.  The sums of a row stay in double across slices and the total
    is rounded once (the row chunks round each chunk's sum).  Known edge:
    float64 logits near the dtype's maximum with label smoothing give NaN
    where the row kernels give inf (the smoothing sum is formed unshifted,
    ``sum_k w_k x_k - m W``)."""
    x, w, b = args.x, args.w, args.b
    compute = args.compute
    n, d = x.shape
    v = args.n_classes
    labels = args.labels if kept is None else args.labels[kept]
    rows, width = slice_shape(n_kept, v, elements, 0 if kept is None else d)
    row_max = np.full(n_kept, -np.inf)
    row_sum = np.zeros(n_kept)
    target_logit = np.zeros(n_kept)
    eps = args.label_smoothing
    smooth = np.zeros(n_kept) if eps else None
    softcap = args.softcap or 0.0
    buf = np.empty(rows * width, compute)
    xbuf = None if kept is None else np.empty((rows, d), compute)
    fold = frontend.kernels.logsumexp_slice_fold
    gemms = Gemms(compute, rows)
    for r0 in range(0, n_kept, rows):
        r1 = min(r0 + rows, n_kept)
        m = r1 - r0
        if kept is None:
            x_r = x[r0:r1]
        else:
            x_r = np.take(x, kept[r0:r1], axis=0, out=xbuf[:m], mode="clip")
        for v0 in range(0, v, width):
            v1 = min(v0 + width, v)
            logits = buf[: m * (v1 - v0)].reshape(m, v1 - v0)
            gemms.logits(x_r, w[v0:v1], logits)
            fold(logits, None if b is None else b[v0:v1], labels[r0:r1], v0,
                 row_max[r0:r1], row_sum[r0:r1], target_logit[r0:r1], SLICE_FOLD_THREADS,
                 softcap, None if smooth is None or args.weight is None else args.weight[v0:v1],
                 None if smooth is None else smooth[r0:r1])
    # a row of -inf folded nothing (m = -inf, s = 0): its sum is NaN, as the
    # whole-row kernel's exp(-inf - -inf) (NaN loss, z-loss and accuracy 0)
    row_sum[row_max == -np.inf] = np.nan
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = np.log(row_sum)
        x_t = target_logit - row_max
        w_t = 1.0 if args.weight is None else args.weight.astype(np.float64)[labels]
        loss = (1.0 - eps) * w_t * (lse - x_t)
        if eps:
            w_total = float(v) if args.weight is None else float(
                args.weight.sum(dtype=np.float64))
            loss += eps / v * (w_total * lse - (smooth - row_max * w_total))
        z = extras.options.get("z_loss", 0.0)
        z_rows = z * (row_max + lse) ** 2 if z else None
        if z_rows is not None:
            loss += z_rows
    correct = ((x_t == 0.0) & (row_sum == row_sum)).astype(np.float64) \
        if args.return_token_accuracy else None
    sel = slice(0, n) if kept is None else kept
    if args.reduction == "none":
        row_loss = np.zeros(n)
        row_loss[sel] = loss
        if extras.row_z is not None and z_rows is not None:
            extras.row_z[sel] = z_rows
        if correct is not None:
            extras.row_acc[sel] = correct
        return extras.finish(finish_loss(args, 0.0, row_loss, denominator))
    if extras.want_z:
        extras.z_sum += float(np.sum(z_rows))
    if correct is not None:
        extras.correct += float(np.sum(correct))
    return extras.finish(finish_loss(args, float(np.sum(loss)), None, denominator))


def run_materialised(frontend, args, with_grad, n_threads, row_scale=None):
    """K-dimensional weights: the logits (N, V, d1, ...) in full."""
    x, w = args.x, args.w
    d = args.n_features
    w2 = w.reshape(math.prod(args.w_shape[:-1]), d)  # not -1: D or V may be 0
    logits = np.matmul(x, w2.T)
    if args.b is not None:
        logits += args.b.reshape(-1)
    logits = logits.reshape(args.logits_shape)
    target = args.labels.reshape(args.logits_shape[:1] + args.extra) \
        if args.labels is not None else args.probs
    options = dict(axis=1, weight=args.weight, ignore_index=args.ignore_index,
                   reduction=args.reduction, label_smoothing=args.label_smoothing,
                   z_loss=args.z_loss, softcap=args.softcap,
                   return_z_loss=args.return_z_loss,
                   return_token_accuracy=args.return_token_accuracy,
                   num_threads=n_threads)
    if not with_grad:
        r = frontend.cross_entropy(logits, target, **options)
        return as_results(r, args)
    r = frontend.cross_entropy_with_grad(logits, target, out=logits, **options)
    loss, g = r[0], r[1]
    if row_scale is not None:
        g *= row_scale.reshape((args.n_rows, 1) + args.extra)
    g2 = g.reshape(args.n_rows, w2.shape[0])  # not -1: N may be 0
    grad_x = g2 @ w2
    grad_w = (g2.T @ x).reshape(args.w_shape)
    grad_b = None if args.b is None else g2.sum(axis=0).reshape(args.w_shape[:-1])
    gx, gw, gb = cast_grads(args, grad_x, grad_w, grad_b)
    return as_results((loss,) + tuple(r[2:]) if args.flags else loss, args), gx, gw, gb

