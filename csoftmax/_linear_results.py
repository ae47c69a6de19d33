"""What a linear cross-entropy call returns, from its chunks' parts: the
"mean" denominator, the z-loss and token accuracy summed over chunks
(:class:`Extras`), the loss and gradients in the result dtype."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _half


class LinearCrossEntropyGradResult(NamedTuple):
    """What :func:`linear_cross_entropy_with_grad` returns when a ``return_*``
    flag is set: the loss, the three gradients, then ``z_loss`` and
    ``token_accuracy`` as in :class:`csoftmax.CrossEntropyResult` (None
    unless asked for)."""

    loss: Any
    grad_input: Any
    grad_linear_weight: Any
    grad_linear_bias: Any
    z_loss: Any = None
    token_accuracy: Any = None


def mean_denominator(args, kept):
    """The "mean" reduction's divisor: the summed weight of the counted rows
    (their number without weights; N for probability targets).  ``kept``:
    the counted rows' indices, None for all."""
    if args.labels is None:
        return float(args.n_rows)
    if args.weight is None:
        return float(args.n_rows if kept is None else kept.size)
    labels = args.labels if kept is None else args.labels[kept]
    return float(np.sum(args.weight.astype(np.float64)[labels]))


def _per_position(args, rows):
    """Per-row values as a "none" result: the result dtype, a scalar for (D,) input."""
    r = _as_result(rows, args.result)
    return r[0] if args.one_sample else r


def finish_loss(args, total_loss, row_loss, denominator):
    if args.reduction == "none":
        return _per_position(args, row_loss)
    if args.reduction == "mean":
        total_loss = total_loss / denominator if denominator != 0.0 else float("nan")
    return _as_result(total_loss, args.result)


def cast_grads(args, gx, gw, gb):
    r = args.result
    gx = gx.reshape(args.x_shape)
    if r != args.compute:
        gx, gw = _as_grad(gx, r), _as_grad(gw, r)
        gb = None if gb is None else _as_grad(gb, r)
    return gx, gw, gb


def _as_grad(g, result):
    """A gradient in the result dtype: to float16/bfloat16 by the kernels'
    rounding (NumPy's float32 -> float16 cast takes ~100 ns a subnormal value)."""
    if _half.half_kind(result) is not None:
        return _half.store(g, result)
    return g.astype(result)


def divide(value, by):
    return value / by if by != 0.0 else float("nan")


class Extras:
    """The z-loss, soft cap and ``return_*`` flags over the chunks: the
    options of each chunk's cross-entropy call, and their parts summed.

    Chunks are reduced with "sum" and the results scaled once by ``1 /
    denominator`` (the summed class weight of the counted rows), but the
    z-loss of a weighted "mean" is divided by the number of counted rows
    ``K`` instead: the chunks then run with ``z_loss * denominator / K``,
    which the common ``1 / denominator`` turns into ``z_loss / K`` (value and
    gradient alike, with no second pass)."""

    def __init__(self, args, n_rows, n_kept, denominator):
        self.args, self.n_kept = args, n_kept
        z = args.z_loss
        self.z_div = denominator  # what the summed z-loss part is divided by ("mean")
        split = (args.reduction == "mean" and args.weight is not None
                 and args.labels is not None and z != 0.0)
        if split:
            if denominator != 0.0 and n_kept:
                z = z * denominator / n_kept
            else:  # the loss is nan; the z-loss part is still its own mean
                self.z_div = float(n_kept)
        self.options = {}
        if z != 0.0:
            self.options["z_loss"] = z
        if args.softcap is not None:
            self.options["softcap"] = args.softcap
        self.want_z = args.return_z_loss and z != 0.0
        if self.want_z:
            self.options["return_z_loss"] = True
        if args.return_token_accuracy:
            self.options["return_token_accuracy"] = True
        self.flagged = self.want_z or args.return_token_accuracy
        none = args.reduction == "none"
        self.row_z = np.zeros(n_rows) if none and args.return_z_loss else None
        self.row_acc = np.zeros(n_rows) if none and args.return_token_accuracy else None
        self.z_sum = 0.0
        self.correct = 0.0

    def add(self, loss, rest, sel, m):
        """Takes the chunk's ``(z_loss, token_accuracy)`` parts ``rest`` (empty
        unless flagged; rows ``sel``, ``m`` of them); returns its ``loss``."""
        if not rest:
            return loss
        z, acc = rest
        if self.args.reduction == "none":
            if self.want_z:
                self.row_z[sel] = z
            if acc is not None:
                self.row_acc[sel] = acc
        else:
            if self.want_z:
                self.z_sum += float(z)
            if acc is not None:  # a fraction of the chunk's rows, all counted
                self.correct += round(float(acc) * m)
        return loss

    def finish(self, loss):
        """The loss, or with a flag the (loss, z_loss, token_accuracy) triple."""
        args = self.args
        if not args.flags:
            return loss
        z = acc = None
        if args.reduction == "none":
            if args.return_z_loss:
                z = _per_position(args, self.row_z)
            if args.return_token_accuracy:
                acc = _per_position(args, self.row_acc)
        else:
            if args.return_z_loss:
                z_sum = self.z_sum
                if args.reduction == "mean":
                    z_sum = divide(z_sum, self.z_div)
                z = _as_result(z_sum, args.result)
            if args.return_token_accuracy:
                acc = _as_result(divide(self.correct, float(self.n_kept)), args.result)
        return loss, z, acc


def as_results(r, args):
    """The loss (a triple with the ``return_*`` flags) in the result dtype."""
    if not args.flags:
        return _as_result(r, args.result)
    return tuple(None if v is None else _as_result(v, args.result) for v in r)


def _as_result(loss, result):
    """Losses (double sums) in the result dtype, rounded once (also to bfloat16)."""
    if _half.half_kind(result) is not None:
        return _half.round_once(loss, result)
    if not isinstance(loss, np.ndarray):
        return result.type(loss)
    return loss.astype(result, copy=False)

