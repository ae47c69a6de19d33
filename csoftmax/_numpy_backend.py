"""The NumPy twin of the compiled kernels.

The row kernels below take exactly the arguments of those in
``src/kernels.pxi`` and compute the same mathematics with NumPy (sums in
float64, the same special cases), so that:

* csoftmax works, with the same results, where the extension is missing
  (or with ``CSOFTMAX_BACKEND=numpy``);
* the tests run both on the same inputs, holding the fast path to the slow one.

The public API bound to these kernels, with the public signatures, is
:mod:`csoftmax.slow` (as Bottleneck's ``bottleneck.slow``).  ``n_threads`` is
accepted and ignored.
"""

from __future__ import annotations

import numpy as np

from . import _half
from ._validation import MaskRows, RowLayout, env_num_threads


def build_info():
    return {"openmp": False, "simd": "numpy"}


def cpu_features():
    return {"avx2": False, "avx512": False}


def default_threads():
    return env_num_threads()


_BLOCK = 1 << 13  # elements per block of rows: bounds the twin's temporaries


def _row_blocks(n_rows, n):
    """Slices of rows of about _BLOCK elements, so that NumPy's temporaries
    stay small (and out=x in place allocates nothing of the input's size)."""
    step = max(1, _BLOCK // max(n, 1))
    return [slice(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def blockwise(*row_args):
    """Decorator: run a row kernel block by block of rows.  ``row_args`` are
    the positions of the arguments that hold one entry per row (None allowed)."""

    def wrap(kernel):
        def run(*args):
            x = args[0]
            blocks = _row_blocks(x.shape[0], x.shape[1])
            if len(blocks) <= 1:
                return kernel(*args)
            for b in blocks:
                kernel(*(a[b] if i in row_args and a is not None else a
                         for i, a in enumerate(args)))
            return None

        run.__name__ = kernel.__name__
        run.__doc__ = kernel.__doc__
        return run

    return wrap


def _exp_shifted(x):
    """``(x - max, exp(x - max), sum in float64)`` per row."""
    m = x.max(axis=1, keepdims=True)
    shifted = x - m
    e = np.exp(shifted)
    return m, shifted, e, e.sum(axis=1, dtype=np.float64)


@blockwise(0, 1)
def softmax_rows(x, out, n_threads):
    if x.size == 0:
        return
    with np.errstate(all="ignore"):
        _, _, e, s = _exp_shifted(x)
        np.multiply(e, (1.0 / s).astype(x.dtype)[:, None], out=out)


@blockwise(0, 1)
def log_softmax_rows(x, out, n_threads):
    if x.size == 0:
        return
    with np.errstate(all="ignore"):
        _, shifted, _, s = _exp_shifted(x)
        np.subtract(shifted, np.log(s).astype(x.dtype)[:, None], out=out)


@blockwise(0, 1)
def logsumexp_rows(x, out, n_threads):
    if x.shape[0] == 0:
        return
    if x.shape[1] == 0:
        out[:] = -np.inf
        return
    with np.errstate(all="ignore"):
        m, _, _, s = _exp_shifted(x)
        m = m[:, 0]
        r = m + np.log(s)
        # a max of +-inf: the row is all -inf, or holds +inf; NaN wins over both
        special = np.isinf(m)
        if special.any():
            has_nan = np.isnan(x[special]).any(axis=1)
            r[special] = np.where(has_nan, np.nan, m[special])
    out[:] = r


@blockwise(0, 1, 2)
def softmax_backward_rows(grad_output, output, out, n_threads):
    if output.size == 0:
        return
    dot = np.einsum("ij,ij->i", grad_output.astype(np.float64), output.astype(np.float64))
    with np.errstate(all="ignore"):
        np.multiply(output, grad_output - dot.astype(output.dtype)[:, None], out=out)


@blockwise(0, 1, 2)
def log_softmax_backward_rows(grad_output, output, out, n_threads):
    if output.size == 0:
        return
    gsum = grad_output.sum(axis=1, dtype=np.float64).astype(output.dtype)
    with np.errstate(all="ignore"):
        np.subtract(grad_output, np.exp(output) * gsum[:, None], out=out)


def label_summary(target, n_classes, ignore_index, weight=None, n_threads=1):
    counted = target != ignore_index
    bad = counted & ((target < 0) | (target >= n_classes))
    if bad.any():
        return int(np.argmax(bad)), float("nan")
    labels = target[counted]
    if weight is None:
        return -1, float(labels.size)
    return -1, float(np.add.reduce(weight[labels]))


@blockwise(0, 1, 6, 7)
def _cross_entropy_index_blocks(logits, target, weight, ignore_index, label_smoothing,
                                grad_scale, row_loss, grad, n_threads):
    n_classes = logits.shape[1]
    alpha = 1.0 - label_smoothing
    beta = label_smoothing / n_classes
    counted = np.flatnonzero(target != ignore_index)
    labels = target[counted]
    x = logits[counted]  # a copy, so grad may be logits
    with np.errstate(all="ignore"):
        m, shifted, e, s = _exp_shifted(x)
        lse = np.log(s)
        w_t = np.ones(len(counted)) if weight is None else weight[labels].astype(np.float64)
        w_total = float(n_classes) if weight is None else float(weight.sum(dtype=np.float64))
        x_t = x[np.arange(len(counted)), labels].astype(np.float64) - m[:, 0].astype(np.float64)
        loss = alpha * w_t * (lse - x_t)
        if beta != 0.0:
            d = x.astype(np.float64) - m.astype(np.float64)
            smooth = d.sum(axis=1) if weight is None else d @ weight.astype(np.float64)
            loss = loss + beta * (w_total * lse - smooth)
        row_loss[:] = 0.0
        row_loss[counted] = loss
        if grad is None:
            return
        # the other classes' weights enter only with smoothing (as in PyTorch)
        y_sum = alpha * w_t + beta * w_total if beta != 0.0 else alpha * w_t
        g = e * (y_sum / s * grad_scale).astype(x.dtype)[:, None]
        if beta != 0.0:
            w = np.ones(n_classes, x.dtype) if weight is None else weight
            g -= x.dtype.type(beta * grad_scale) * w
        g[np.arange(len(counted)), labels] -= (alpha * w_t * grad_scale).astype(x.dtype)
    grad[:] = 0
    grad[counted] = g


@blockwise(0, 1, 5, 6)
def _cross_entropy_prob_blocks(logits, target, weight, label_smoothing, grad_scale,
                               row_loss, grad, n_threads):
    n_classes = logits.shape[1]
    alpha = 1.0 - label_smoothing
    beta = label_smoothing / n_classes
    with np.errstate(all="ignore"):
        m, _, e, s = _exp_shifted(logits)
        y = alpha * target.astype(np.float64) + beta
        if weight is not None:
            y = y * weight.astype(np.float64)
        d = logits.astype(np.float64) - m.astype(np.float64)
        y_sum = y.sum(axis=1)
        row_loss[:] = y_sum * np.log(s) - np.einsum("ij,ij->i", y, d)
        if grad is not None:
            g = e * (y_sum / s * grad_scale).astype(logits.dtype)[:, None]
            grad[:] = g - (y * grad_scale).astype(logits.dtype)


# z-loss, soft cap, token accuracy (the options of the compiled kernels, same
# signature): the cap as a capped copy, the z-loss and the accuracy from a
# second look at each block of rows (the twin favours plainness over one pass)

def _softcapped(logits, softcap):
    c = logits.dtype.type(softcap)
    with np.errstate(all="ignore"):
        return c * np.tanh(logits / c)


@blockwise(0, 1, 2, 3, 4)
def _extras_blocks(logits, counted, target, row_z, row_acc, z_loss):
    """z lse^2 (row_z) and target == row max (row_acc) of the counted rows
    (0 elsewhere); either array may be None."""
    with np.errstate(all="ignore"):
        m, _, _, s = _exp_shifted(logits)
        if row_z is not None:
            lse = m[:, 0].astype(np.float64) + np.log(s)
            row_z[:] = np.where(counted, z_loss * lse * lse, 0.0)
        if row_acc is not None:
            t = np.where(counted, target, 0)
            x_t = logits[np.arange(len(t)), t]
            correct = (x_t == m[:, 0]) & ~np.isnan(s)
            row_acc[:] = np.where(counted, correct, False)


@blockwise(0, 1, 2)
def _z_grad_blocks(logits, counted, grad, coef):
    """grad += 2 z_scale z lse softmax on the counted rows (coef: 2 z z_scale)."""
    with np.errstate(all="ignore"):
        m, _, e, s = _exp_shifted(logits)
        lse = m[:, 0].astype(np.float64) + np.log(s)
        c = np.where(counted, coef * lse / s, 0.0).astype(logits.dtype)
        grad += e * c[:, None]
        grad[~counted] = 0


def _with_extras(run, logits, target, counted, grad, z_loss, z_scale, softcap, row_z,
                 row_acc):
    """run(logits) (the plain kernel, returning its sum) with the options."""
    capped = None
    if softcap:
        logits = capped = _softcapped(logits, softcap)
    elif z_loss and grad is not None and np.may_share_memory(grad, logits):
        logits = logits.copy()  # in place: the z-loss gradient reads the logits after
    if z_loss or row_acc is not None:
        _extras_blocks(logits, counted, target, row_z if z_loss else None, row_acc, z_loss)
    total = run(logits)
    if grad is not None and z_loss:
        _z_grad_blocks(logits, counted, grad, 2.0 * z_loss * z_scale)
    if grad is not None and capped is not None:
        with np.errstate(all="ignore"):
            u = capped / capped.dtype.type(softcap)
            # a zero gradient stays zero (ignored rows holding NaN logits), as in the kernels
            np.multiply(grad, 1 - u * u, out=grad, where=grad != 0)
    return total


def _loss_rows(row_loss, n):
    """row_loss, or where it is None (the caller takes their sum alone) room
    for the n row losses."""
    return np.empty(n, np.float64) if row_loss is None else row_loss


def cross_entropy_index_rows(logits, target, weight, ignore_index, label_smoothing,
                             grad_scale, row_loss, grad, n_threads, z_loss=0.0, z_scale=0.0,
                             softcap=0.0, row_z=None, row_acc=None):
    row_loss = _loss_rows(row_loss, logits.shape[0])

    def run(x):
        _cross_entropy_index_blocks(x, target, weight, ignore_index, label_smoothing,
                                    grad_scale, row_loss, grad, n_threads)
        return float(np.add.reduce(row_loss))

    if not (z_loss or softcap or row_acc is not None):
        return run(logits)
    return _with_extras(run, logits, target, target != ignore_index, grad, z_loss, z_scale,
                        softcap, row_z, row_acc)


def cross_entropy_prob_rows(logits, target, weight, label_smoothing, grad_scale,
                            row_loss, grad, n_threads, z_loss=0.0, z_scale=0.0, softcap=0.0,
                            row_z=None):
    row_loss = _loss_rows(row_loss, logits.shape[0])

    def run(x):
        _cross_entropy_prob_blocks(x, target, weight, label_smoothing, grad_scale,
                                   row_loss, grad, n_threads)
        return float(np.add.reduce(row_loss))

    if not (z_loss or softcap):
        return run(logits)
    counted = np.ones(logits.shape[0], bool)
    return _with_extras(run, logits, None, counted, grad, z_loss, z_scale, softcap, row_z,
                        None)


@blockwise(0, 2, 4, 5, 6, 10)
def logsumexp_slice_fold(logits, bias, target, class0, row_max, row_sum, target_logit,
                         n_threads, softcap=0.0, weight=None, smooth=None):
    """The compiled kernel's twin (src/vocabsplit.pxi): logits (m, k), the
    classes [class0, class0 + k) of m rows (bias (k,) or None added in place,
    then capped if softcap > 0), folded into each row's running max and
    exp-sum; the target's logit copied where it lies in the slice; smooth
    (or None) gains each row's sum of weight_j x_j.  NaN or +inf in a slice
    makes the sum NaN."""
    if bias is not None:
        np.add(logits, bias, out=logits)
    if softcap > 0:
        logits[...] = _softcapped(logits, softcap)
    if smooth is not None:
        with np.errstate(invalid="ignore"):
            smooth += (logits.sum(axis=1, dtype=np.float64) if weight is None
                       else logits.astype(np.float64) @ weight.astype(np.float64))
    k = logits.shape[1]
    t = target.astype(np.intp) - class0
    here = np.flatnonzero((t >= 0) & (t < k))
    target_logit[here] = logits[here, t[here]]
    m = np.fmax.reduce(logits, axis=1)  # NaN left out, as the kernel's row_max
    bad = (m == np.inf) | np.isnan(logits).any(axis=1)
    live = np.flatnonzero(np.isfinite(m) & ~bad)
    mk = m[live].astype(np.float64)
    s = np.exp(logits[live] - m[live, None]).sum(axis=1, dtype=np.float64)
    old = row_max[live]
    up = mk > old
    with np.errstate(invalid="ignore", over="ignore"):
        row_sum[live] = np.where(up, row_sum[live] * np.exp(old - mk) + s,
                                 row_sum[live] + s * np.exp(mk - old))
    row_max[live] = np.maximum(old, mk)
    row_sum[bad] = np.nan


# ---------------------------------------------------------------------------
# over the middle axis of (outer, C, inner) arrays: the row kernels above on
# the class axis moved last (a copy), with the compiled kernels' signatures


def _moved(x):
    """x (outer, C, inner) as C-contiguous rows (outer * inner, C): a view of
    x where it can be (inner == 1 or C == 1), a copy otherwise."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(x.shape[0] * x.shape[2],
                                                                x.shape[1])


def _moved_back(r, shape):
    """rows (outer * inner, C) back to (outer, C, inner)."""
    return np.moveaxis(r.reshape(shape[0], shape[2], shape[1]), -1, 1)


def softmax_strided(x, out, n_threads):
    if x.size:
        r = np.empty((x.shape[0] * x.shape[2], x.shape[1]), x.dtype)
        softmax_rows(_moved(x), r, n_threads)  # _moved(x) may be a view of x (or out)
        out[...] = _moved_back(r, x.shape)


def log_softmax_strided(x, out, n_threads):
    if x.size:
        r = np.empty((x.shape[0] * x.shape[2], x.shape[1]), x.dtype)
        log_softmax_rows(_moved(x), r, n_threads)
        out[...] = _moved_back(r, x.shape)


def logsumexp_strided(x, out, n_threads):
    if out.size:
        logsumexp_rows(_moved(x), out.reshape(-1), n_threads)


def backward_strided(op, grad_output, output, out, n_threads):
    if output.size:
        r = np.empty((output.shape[0] * output.shape[2], output.shape[1]), output.dtype)
        _backward_rows(op, _moved(grad_output), _moved(output), r, n_threads)
        out[...] = _moved_back(r, output.shape)


def masked_strided(op, x, grad_output, mask, so, sc, si, out, n_threads):
    """The masked row kernels on the moved arrays, the mask (outer, C, inner) by
    its strides read as a MaskRows of that layout."""
    outer, c, inner = x.shape
    if x.size == 0:
        return
    mask3 = np.lib.stride_tricks.as_strided(mask, (outer, c, inner), (so, sc, si),
                                            writeable=False)
    rows = MaskRows(mask3, mask3.shape, RowLayout(mask3.shape, 1))
    kernel = _MASKED_KERNELS[op]
    if op == 2:  # logsumexp: out (outer * inner,)
        kernel(_moved(x), rows, out, n_threads)
        return
    r = np.empty((outer * inner, c), x.dtype)
    if grad_output is None:
        kernel(_moved(x), rows, r, n_threads)
    else:
        kernel(_moved(grad_output), _moved(x), rows, r, n_threads)
    out.reshape(x.shape)[...] = _moved_back(r, x.shape)


def half_masked_strided(op, x, grad_output, mask, so, sc, si, out, out32, kind, n_threads):
    x32 = _half.load_numpy(x, kind)
    g32 = None if grad_output is None else _half.load_numpy(grad_output, kind)
    if op == 2:  # logsumexp: float32 out32
        masked_strided(op, x32, None, mask, so, sc, si, out32, n_threads)
        return
    r = np.empty(x32.size, np.float32)
    masked_strided(op, x32, g32, mask, so, sc, si, r, n_threads)
    _half.store_numpy(r, out, kind)


def cross_entropy_index_strided(logits, target, weight, ignore_index, label_smoothing,
                                grad_scale, row_loss, grad, n_threads, **options):
    if logits.shape[0] * logits.shape[2] == 0:
        return 0.0
    r = _moved(logits)
    g = None if grad is None else np.empty_like(r)
    total = cross_entropy_index_rows(r, target.reshape(-1), weight, ignore_index,
                                     label_smoothing, grad_scale, row_loss, g, n_threads,
                                     **options)
    if grad is not None:
        grad[...] = _moved_back(g, logits.shape)
    return total


def cross_entropy_prob_strided(logits, target, weight, label_smoothing, grad_scale,
                               row_loss, grad, n_threads, **options):
    if logits.shape[0] * logits.shape[2] == 0:
        return 0.0
    r = _moved(logits)
    g = None if grad is None else np.empty_like(r)
    total = cross_entropy_prob_rows(r, _moved(target), weight, label_smoothing, grad_scale,
                                    row_loss, g, n_threads, **options)
    if grad is not None:
        grad[...] = _moved_back(g, logits.shape)
    return total


# ---------------------------------------------------------------------------
# masked (where=): the mask is a csoftmax._validation.MaskRows; its rows are
# read block by block (a copy of one block's rows at a time)


def _masked_blocks(n_rows, n, mask):
    for b in _row_blocks(n_rows, n):
        yield b, mask.block(b.start, b.stop)


def _masked_exp(x, k):
    """``(kept-or--inf x, max over kept, exp(x - max) (0 where masked), sum)``."""
    xm = np.where(k, x, x.dtype.type(-np.inf))
    m = xm.max(axis=1, keepdims=True)
    e = np.exp(xm - m)
    return xm, m, e, e.sum(axis=1, dtype=np.float64)


def masked_softmax_rows(x, mask, out, n_threads):
    if x.size == 0:
        return
    with np.errstate(all="ignore"):
        for b, k in _masked_blocks(*x.shape, mask):
            _, _, e, s = _masked_exp(x[b], k)
            np.copyto(out[b], np.where(k, e * (1.0 / s).astype(x.dtype)[:, None], 0))


def masked_log_softmax_rows(x, mask, out, n_threads):
    if x.size == 0:
        return
    with np.errstate(all="ignore"):
        for b, k in _masked_blocks(*x.shape, mask):
            xm, m, _, s = _masked_exp(x[b], k)
            lse = np.log(s).astype(x.dtype)[:, None]
            np.copyto(out[b], np.where(k, (xm - m) - lse, -np.inf))


def masked_logsumexp_rows(x, mask, out, n_threads):
    if x.shape[0] == 0:
        return
    if x.shape[1] == 0:
        out[:] = -np.inf
        return
    with np.errstate(all="ignore"):
        for b, k in _masked_blocks(*x.shape, mask):
            xm, m, _, s = _masked_exp(x[b], k)
            m = m[:, 0]
            r = m + np.log(s)
            special = np.isinf(m)  # nothing kept or only -inf, or +inf kept
            if special.any():
                has_nan = np.isnan(xm[special]).any(axis=1)
                r[special] = np.where(has_nan, np.nan, m[special])
            out[b] = r


def masked_softmax_backward_rows(grad_output, output, mask, out, n_threads):
    if output.size == 0:
        return
    with np.errstate(all="ignore"):
        for b, k in _masked_blocks(*output.shape, mask):
            g, a = grad_output[b], output[b]
            ga = np.where(k, g.astype(np.float64) * a.astype(np.float64), 0.0)
            dot = ga.sum(axis=1).astype(a.dtype)[:, None]
            np.copyto(out[b], np.where(k, a * (g - dot), 0))


def masked_log_softmax_backward_rows(grad_output, output, mask, out, n_threads):
    if output.size == 0:
        return
    with np.errstate(all="ignore"):
        for b, k in _masked_blocks(*output.shape, mask):
            g, o = grad_output[b], output[b]
            gsum = np.where(k, g, 0).sum(axis=1, dtype=np.float64).astype(o.dtype)[:, None]
            np.copyto(out[b], np.where(k, g - np.exp(o) * gsum, 0))



# ---------------------------------------------------------------------------
# 16-bit storage (float16, bfloat16 as uint16 bits of a kind, see _half.py):
# the float32 kernels above on the values converted to float32, the results
# rounded once to 16 bits (the compiled kernels' bits, see src/half.pxi)

def half_load_array(src, dst, kind, n_threads=1):
    dst[:] = _half.load_numpy(src, kind)


def half_store_array(src, dst, kind, n_threads=1):
    _half.store_numpy(src, dst, kind)


def _half_forward(kernels, op, x, out, kind, n_threads):
    """softmax (op 0) or log_softmax (op 1) of ``kernels`` on the converted 16-bit x."""
    r = _half.load_numpy(x, kind)
    kernels[op](r, r, n_threads)
    _half.store_numpy(r, out, kind)


def half_rows(op, x, out, kind, n_threads):
    _half_forward((softmax_rows, log_softmax_rows), op, x, out, kind, n_threads)


def half_logsumexp_rows(x, out, kind, n_threads):
    logsumexp_rows(_half.load_numpy(x, kind), out, n_threads)


HALF_STRIDED_CLASSES = _half.HALF_STRIDED_CLASSES


def half_strided(op, x, out, kind, n_threads):
    _half_forward((softmax_strided, log_softmax_strided), op, x, out, kind, n_threads)


def half_logsumexp_strided(x, out, kind, n_threads):
    logsumexp_strided(_half.load_numpy(x, kind), out, n_threads)


def _half_backward(kernel, op, grad_output, output, out, kind, n_threads):
    """The float32 backward ``kernel(op, g, a, out, n_threads)`` on the converted
    16-bit inputs, the result rounded into the 16-bit ``out``."""
    g = _half.load_numpy(grad_output, kind)
    kernel(op, g, _half.load_numpy(output, kind), g, n_threads)
    _half.store_numpy(g, out, kind)


def _backward_rows(op, grad_output, output, out, n_threads):
    kernel = softmax_backward_rows if op == 0 else log_softmax_backward_rows
    kernel(grad_output, output, out, n_threads)


def half_strided_backward(op, grad_output, output, out, kind, n_threads):
    _half_backward(backward_strided, op, grad_output, output, out, kind, n_threads)


def half_backward_rows(op, grad_output, output, out, kind, n_threads):
    _half_backward(_backward_rows, op, grad_output, output, out, kind, n_threads)


#: masked_row's ops (src/masked.hpp): their float32 kernels above
_MASKED_KERNELS = (masked_softmax_rows, masked_log_softmax_rows, masked_logsumexp_rows,
                   masked_softmax_backward_rows, masked_log_softmax_backward_rows)


def half_masked_rows(op, x, grad_output, mask, out, kind, n_threads):
    kernel = _MASKED_KERNELS[op]
    a = _half.load_numpy(x, kind)
    if op == 2:  # logsumexp: float32 out
        kernel(a, mask, out, n_threads)
    elif grad_output is None:
        kernel(a, mask, a, n_threads)
        _half.store_numpy(a, out, kind)
    else:
        g = _half.load_numpy(grad_output, kind)
        kernel(g, a, mask, a, n_threads)
        _half.store_numpy(a, out, kind)


def _half_ce(kernel, logits, args, grad, kind, n_threads, extra):
    """The float32 cross-entropy ``kernel(x, *args, grad, n_threads, **extra)`` on
    the converted 16-bit logits, the gradient rounded into the 16-bit ``grad``."""
    x = _half.load_numpy(logits, kind)
    total = kernel(x, *args, None if grad is None else x, n_threads, **extra)
    if grad is not None:
        _half.store_numpy(x, grad, kind)
    return total


def half_cross_entropy_index_rows(logits, target, weight, ignore_index, label_smoothing,
                                  grad_scale, row_loss, grad, kind, n_threads, **extra):
    return _half_ce(cross_entropy_index_rows, logits,
                    (target, weight, ignore_index, label_smoothing, grad_scale, row_loss),
                    grad, kind, n_threads, extra)


def half_cross_entropy_index_strided(logits, target, weight, ignore_index, label_smoothing,
                                     grad_scale, row_loss, grad, kind, n_threads, **extra):
    return _half_ce(cross_entropy_index_strided, logits,
                    (target, weight, ignore_index, label_smoothing, grad_scale, row_loss),
                    grad, kind, n_threads, extra)


def _half_prob(kernel, logits, target, args, grad, kind, n_threads, extra):
    """_half_ce for probability targets: 16-bit ones (uint16 bits) converted too."""
    if target.dtype == np.uint16:
        target = _half.load_numpy(target, kind)
    return _half_ce(kernel, logits, (target, *args), grad, kind, n_threads, extra)


def half_cross_entropy_prob_rows(logits, target, weight, label_smoothing, grad_scale,
                                 row_loss, grad, kind, n_threads, **extra):
    return _half_prob(cross_entropy_prob_rows, logits, target,
                      (weight, label_smoothing, grad_scale, row_loss), grad, kind, n_threads,
                      extra)


def half_cross_entropy_prob_strided(logits, target, weight, label_smoothing, grad_scale,
                                    row_loss, grad, kind, n_threads, **extra):
    return _half_prob(cross_entropy_prob_strided, logits, target,
                      (weight, label_smoothing, grad_scale, row_loss), grad, kind, n_threads,
                      extra)


def logsumexp_scaled_rows(x, b, out, sign, n_threads):
    """out[i] = log|sum_k b[i, k] exp(x[i, k])|, sign[i] the sum's sign: the
    compiled kernel's formulation (src/scaled.hpp) in NumPy."""
    if x.shape[0] == 0:
        return
    if x.shape[1] == 0:
        out[:] = -np.inf
        sign[:] = 0
        return
    with np.errstate(all="ignore"):
        kept = b != 0
        bad = (np.isnan(b) | (kept & np.isnan(x))
               | (kept & np.isinf(b) & (x == -np.inf))).any(axis=1)
        m = np.where(kept, x, -np.inf).max(axis=1)
        finite = np.isfinite(m)
        shift = np.where(finite, m, 0.0).astype(x.dtype)[:, None]
        e = np.exp(x - shift)
        s = np.where(kept, b.astype(np.float64) * e, 0.0).sum(axis=1)
        r = np.where(s == 0, -np.inf, m + np.log(np.abs(s)))
        sg = np.where(s == 0, 0.0, np.sign(s))
        # +inf terms alone: +inf of their sign, NaN where both signs are there
        top = kept & (x == np.inf)
        pos, neg = (top & (b > 0)).any(axis=1), (top & (b < 0)).any(axis=1)
        r = np.where(m == np.inf, np.where(pos & neg, np.nan, np.inf), r)
        sg = np.where(m == np.inf, np.where(pos & neg, np.nan, np.where(pos, 1.0, -1.0)), sg)
        r = np.where(m == -np.inf, -np.inf, r)
        sg = np.where(m == -np.inf, 0.0, sg)
        nan = bad | np.isnan(s) & finite
        out[:] = np.where(nan, np.nan, r)
        sign[:] = np.where(nan, np.nan, sg)
