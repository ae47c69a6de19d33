"""Straightforward reference implementations, computed in extended precision.

Every function here is written for clarity, not speed: whole-array NumPy in
``np.longdouble`` (80-bit on x86-64 Linux, plain double elsewhere), following
the mathematics and the inf/NaN rules of API.md, and PyTorch's
``torch.nn.functional.cross_entropy`` (aten/src/ATen/native/LossNLL.cpp) for
the loss.  Results come back as ``np.longdouble`` arrays; callers round them.
"""

from __future__ import annotations

import numpy as np

LD = np.longdouble


def _as_ld(x):
    return np.asarray(x, dtype=LD)


def _flat_axis(x, axis):
    """(array, axis) with ``axis=None`` turned into axis 0 of the flattened array."""
    if axis is None:
        return x.reshape(-1), 0
    return x, axis


def softmax(x, axis=-1):
    x = _as_ld(x)
    shape = x.shape
    x, axis = _flat_axis(x, axis)
    if x.size == 0:
        return np.empty(shape, dtype=LD)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=axis, keepdims=True)  # NaN propagates; +inf gives inf - inf = NaN
        e = np.exp(x - m)  # an all -inf row gives -inf - -inf = NaN
        out = e / e.sum(axis=axis, keepdims=True)
    return out.reshape(shape)


def log_softmax(x, axis=-1):
    x = _as_ld(x)
    shape = x.shape
    x, axis = _flat_axis(x, axis)
    if x.size == 0:
        return np.empty(shape, dtype=LD)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        shifted = x - m
        out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return out.reshape(shape)


def logsumexp(x, axis=-1):
    """SciPy/PyTorch semantics: all -inf gives -inf, +inf (no NaN) gives +inf, NaN gives NaN,
    an empty axis gives -inf."""
    x = _as_ld(x)
    x, axis = _flat_axis(x, axis)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0)
        out = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def softmax_backward(grad_output, output, axis=-1):
    g, a = _as_ld(grad_output), _as_ld(output)
    shape = g.shape
    g, axis = _flat_axis(g, axis)
    a = a.reshape(g.shape)
    out = a * (g - (g * a).sum(axis=axis, keepdims=True))
    return out.reshape(shape)


def log_softmax_backward(grad_output, output, axis=-1):
    g, logp = _as_ld(grad_output), _as_ld(output)
    shape = g.shape
    g, axis = _flat_axis(g, axis)
    logp = logp.reshape(g.shape)
    out = g - np.exp(logp) * g.sum(axis=axis, keepdims=True)
    return out.reshape(shape)


def smoothed_target(target, n_classes, *, weight=None, ignore_index=-100, label_smoothing=0.0):
    """The effective per-row target y' of shape (N, C), the rows counted by ``"mean"``, and
    the ``"mean"`` divisor, as in PyTorch.

    Integer targets: y'_k = (1 - eps) w_t [k == t] + eps / C * w_k, zero on ignored rows; the
    mean divides by sum of w[t] over the rows not ignored.  Probability targets:
    y'_k = w_k ((1 - eps) y_k + eps / C); the mean divides by N.
    """
    t = np.asarray(target)
    c = n_classes
    w = np.ones(c, dtype=LD) if weight is None else _as_ld(weight)
    eps = LD(label_smoothing)
    if t.dtype.kind in "iu":
        t = t.astype(np.int64)
        ignored = t == ignore_index
        safe = np.where(ignored, 0, t)
        onehot = np.zeros((t.shape[0], c), dtype=LD)
        onehot[np.arange(t.shape[0]), safe] = 1
        y = (1 - eps) * onehot * w[safe][:, None] + eps / c * w
        y[ignored] = 0
        divisor = w[safe][~ignored].sum()
    else:
        ignored = np.zeros(t.shape[0], dtype=bool)
        y = w * ((1 - eps) * _as_ld(t) + eps / c)
        divisor = LD(t.shape[0])
    return y, ignored, divisor


def cross_entropy_with_grad(
    logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0
):
    """(loss, grad) in extended precision with the semantics of API.md.

    Terms with y'_k == 0 contribute nothing to the loss (so a masked class, logit -inf, that is
    not a target gives a finite loss, as PyTorch's nll_loss does); a row whose log-softmax is
    NaN (NaN, +inf, or all -inf logits) gives NaN; ignored rows give exactly 0 loss and 0 grad.
    """
    x = _as_ld(logits)
    single = x.ndim == 1
    if single:
        x = x[None, :]
        target = np.asarray(target)[None, ...]
    n, c = x.shape
    y, ignored, divisor = smoothed_target(
        target, c, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing
    )
    logp = log_softmax(x, axis=1)
    a = softmax(x, axis=1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        terms = np.where(y != 0, -y * logp, 0)
        bad_row = np.isnan(logp).any(axis=1)
        per_row = terms.sum(axis=1) + np.where(bad_row, np.nan, 0)
        grad = a * y.sum(axis=1, keepdims=True) - y
        if reduction == "mean":
            loss = per_row[~ignored].sum() / divisor  # 0 / 0 = NaN when nothing is counted
            grad = grad / divisor
        elif reduction == "sum":
            loss = per_row[~ignored].sum()
        elif reduction == "none":
            loss = per_row
        else:
            raise ValueError(reduction)
    if reduction == "none":
        loss = np.where(ignored, 0, loss)
    grad[ignored] = 0
    if single:
        grad = grad[0]
        if reduction == "none":
            loss = loss[0]
    return loss, grad


def cross_entropy(logits, target, **kwargs):
    return cross_entropy_with_grad(logits, target, **kwargs)[0]
