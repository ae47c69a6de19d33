"""The cross-entropy functions of the public API, as a mixin of
:class:`csoftmax._api.Frontend`, and the named tuples they return with a
``return_*`` flag."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._half import bits, round_once
from ._runner import _threads_for, _threads_strided
from ._validation import (
    CrossEntropyArgs,
    aliases_exactly,
)


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


class CrossEntropyFunctions:
    """cross_entropy and cross_entropy_with_grad."""

    # -- cross-entropy -----------------------------------------------------

    def _cross_entropy(self, args, grad, num_threads):
        """Row losses (float64) and the gradient into ``grad`` (or none);
        returns the reduced loss in the result dtype."""
        n_rows, n_classes = args.n_rows, args.n_classes
        threads = _threads_for(n_rows, n_classes, num_threads)
        # the row losses are the result of "none"; a reduction takes their sum
        # alone, and the kernels then keep them in scratch memory they reuse
        row_loss = np.empty(n_rows, np.float64) if args.reduction == "none" else None
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
            if args.half is not None:
                total_loss = self._half_cross_entropy(args, scale, row_loss, grad, threads,
                                                      extra)
            elif args.middle is not None and args.probs is not None:
                outer, _, inner = args.middle
                total_loss = self.kernels.cross_entropy_prob_strided(
                    args.logits, args.probs, args.weight, args.label_smoothing, scale,
                    row_loss, grad,
                    _threads_strided(outer, n_classes, inner, args.compute.itemsize,
                                     num_threads), **extra,
                )
            elif args.middle is not None:
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
        loss = round_once(total_loss, args.result)
        if not flags:
            return loss
        accuracy = None
        if args.return_token_accuracy:
            correct = float(np.add.reduce(row_acc))
            accuracy = round_once(correct / kept if kept != 0.0 else float("nan"), args.result)
        return loss, round_once(z_part, args.result) if args.return_z_loss else None, accuracy

    def _half_cross_entropy(self, args, scale, row_loss, grad, threads, extra):
        """The 16-bit kernels' call (logits, gradient and 16-bit targets as
        uint16 bits); returns the sum of the row losses."""
        g = None if grad is None else bits(grad)
        probs = args.probs
        if probs is not None and probs.dtype == args.storage:
            probs = bits(probs)
        if args.middle is not None:  # over a middle axis (CrossEntropyArgs)
            outer, n_classes, inner = args.middle
            threads = _threads_strided(outer, n_classes, inner, args.storage.itemsize, threads)
            if args.labels is not None:
                return self.kernels.half_cross_entropy_index_strided(
                    bits(args.logits), args.labels.reshape(outer, inner), args.weight,
                    args.ignore_index, args.label_smoothing, scale, row_loss, g, args.half,
                    threads, **extra)
            return self.kernels.half_cross_entropy_prob_strided(
                bits(args.logits), probs, args.weight, args.label_smoothing, scale, row_loss,
                g, args.half, threads, **extra)
        if args.labels is not None:
            return self.kernels.half_cross_entropy_index_rows(
                bits(args.logits), args.labels, args.weight, args.ignore_index,
                args.label_smoothing, scale, row_loss, g, args.half, threads, **extra)
        return self.kernels.half_cross_entropy_prob_rows(
            bits(args.logits), probs, args.weight, args.label_smoothing, scale, row_loss, g,
            args.half, threads, **extra)

    @staticmethod
    def _per_position(args, rows):
        """Per-row float64 values as a "none" result (the positions' shape)."""
        r = round_once(rows, args.result).reshape(args.positions)
        return r[()] if args.one_sample else r

    def cross_entropy(self, logits, target, *, axis=-1, weight=None, ignore_index=-100,
                      reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                      return_z_loss=False, return_token_accuracy=False, num_threads=None):
        """Cross-entropy of softmax(logits) against ``target``, as
        ``torch.nn.functional.cross_entropy`` on ``(N, C)`` input.

        Parameters
        ----------
        logits : array_like, shape (N, C), (C,) or any N-D shape
            Unnormalised scores; the classes lie along ``axis``.  float16 and
            bfloat16 (``ml_dtypes``) logits are read in 16 bits and computed in
            float32; the loss is summed in double and rounded once to their
            dtype, the gradient rounded once.
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
        r = self._fast_cross_entropy(logits, target, axis, ignore_index, reduction,
                                     label_smoothing, num_threads, False, None, weight,
                                     z_loss, softcap, return_z_loss, return_token_accuracy)
        if r is not None:
            # the flags are True or False here: the fast path declines anything else
            return CrossEntropyResult(*r) if return_z_loss or return_token_accuracy else r
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
            "mean" factor, and the ``1 - tanh**2`` of the cap).  The compiled
            kernels cap what they read without a capped copy of the logits:
            long rows in a scratch row per thread, short rows (under 256
            bytes) in their tile, rows split over threads a chunk at a time,
            a class axis that is not the last in its staging blocks.
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
            ``d loss / d logits``, the logits' shape and dtype.  With a
            ``return_*`` flag the result is a :class:`CrossEntropyGradResult`
            named tuple ``(loss, grad, z_loss, token_accuracy)``.

        Examples
        --------
        >>> import numpy as np, csoftmax
        >>> loss, grad = csoftmax.cross_entropy_with_grad(np.zeros((1, 2)), np.array([1]))
        >>> float(loss.round(4)), grad
        (0.6931, array([[ 0.5, -0.5]]))
        """
        r = self._fast_cross_entropy(logits, target, axis, ignore_index, reduction,
                                     label_smoothing, num_threads, True, out, weight,
                                     z_loss, softcap, return_z_loss, return_token_accuracy)
        if r is not None:
            return CrossEntropyGradResult(*r) if return_z_loss or return_token_accuracy else r
        args = CrossEntropyArgs(logits, target, weight, ignore_index, reduction, label_smoothing,
                                axis, z_loss, softcap, return_z_loss, return_token_accuracy)
        if out is not None:
            args.check_out(out)
        x = args.logits
        direct = (
            out is not None
            and not args.moved
            and args.result == args.storage
            and out.flags.aligned
            and (not np.may_share_memory(out, x) or aliases_exactly(out, x))
        )
        if direct:
            grad = out.reshape(x.shape)
        else:
            grad = np.empty(x.shape, args.storage)
        loss = self._cross_entropy(args, grad, num_threads)
        if direct:
            grad = out
        else:
            grad = args.restore(grad)
            if out is not None:
                np.copyto(out, grad, casting="unsafe")
                grad = out
            elif grad.dtype != args.result:
                grad = grad.astype(args.result)
        if isinstance(loss, tuple):
            return CrossEntropyGradResult(loss[0], grad, *loss[1:])
        return loss, grad
