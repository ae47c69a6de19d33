"""The validated arguments of a linear cross-entropy call: the one place where
:func:`csoftmax.linear_cross_entropy`'s inputs are checked, before any work."""

from __future__ import annotations

import math

import numpy as np

from . import _threads
from ._validation import (
    _as_label_array,
    as_ndarray,
    check_count,
    check_flag,
    check_loss_options,
    check_num_threads,
    check_softcap,
    check_z_loss,
    contiguous,
    float_dtypes,
)


class LinearArgs:
    """Validated arguments of a linear cross-entropy call (nothing runs
    before this has checked every input)."""

    def __init__(self, input, linear_weight, target, linear_bias=None, weight=None,
                 ignore_index=-100, reduction="mean", label_smoothing=0.0, num_threads=None,
                 chunk_size=None, z_loss=0.0, softcap=None, return_z_loss=False,
                 return_token_accuracy=False):
        reduction, eps, ignore_index = check_loss_options(reduction, label_smoothing,
                                                           ignore_index)
        self.num_threads = check_num_threads(num_threads)
        self.chunk_size = check_count(chunk_size, "chunk_size")
        self.z_loss = check_z_loss(z_loss)
        self.softcap = check_softcap(softcap)
        self.return_z_loss = check_flag(return_z_loss, "return_z_loss")
        self.return_token_accuracy = check_flag(return_token_accuracy, "return_token_accuracy")
        self.flags = self.return_z_loss or self.return_token_accuracy
        self.reduction, self.label_smoothing, self.ignore_index = reduction, eps, ignore_index

        x = as_ndarray(input, "input")
        w = as_ndarray(linear_weight, "linear_weight")
        b = None if linear_bias is None else as_ndarray(linear_bias, "linear_bias")
        dtypes = [float_dtypes(x.dtype, "input"), float_dtypes(w.dtype, "linear_weight")]
        if b is not None:
            dtypes.append(float_dtypes(b.dtype, "linear_bias"))
        if x.ndim not in (1, 2):
            raise ValueError(f"input must be (N, D) or (D,), got shape {x.shape}")
        if w.ndim < 2:
            raise ValueError(
                f"linear_weight must be (V, D) or (V, d1, ..., D), got shape {w.shape}")
        if x.shape[-1] != w.shape[-1]:
            raise ValueError(
                f"input of shape {x.shape} and linear_weight of shape {w.shape} differ in "
                f"their last dimension (the features)")
        if b is not None and b.shape != w.shape[:-1]:
            raise ValueError(
                f"linear_bias has shape {b.shape}, expected {w.shape[:-1]} for "
                f"linear_weight of shape {w.shape}")
        self.extra = w.shape[1:-1]  # K-dimensional loss: (d1, ..., dK)
        if self.extra and x.ndim == 1:
            raise ValueError(
                f"linear_weight of shape {w.shape} (a K-dimensional loss) needs (N, D) "
                f"input, got shape {x.shape}")
        # the logits' dtype: the inputs' promoted result dtype
        result = np.result_type(*(r for _, r in dtypes))
        self.compute, self.result = float_dtypes(result, "input")
        self.one_sample = x.ndim == 1
        self.n_rows = 1 if self.one_sample else x.shape[0]
        self.n_features = x.shape[-1]
        self.n_classes = w.shape[0]
        if self.n_classes == 0 and self.n_rows * math.prod(self.extra) > 0:
            raise ValueError(f"linear_weight of shape {w.shape} has no classes (V = 0)")
        self.x_shape, self.w_shape = x.shape, w.shape
        self.logits_shape = x.shape[:-1] + w.shape[:-1]
        positions = x.shape[:-1] + self.extra

        y = as_ndarray(target, "target")
        self.labels = self.probs = None
        if y.dtype.kind in "iu":
            if y.shape != positions:
                raise ValueError(
                    f"class-index target has shape {y.shape}, expected {positions} for "
                    f"input of shape {x.shape} and linear_weight of shape {w.shape}")
            self.labels_in = y.reshape(-1)
            self.labels = _as_label_array(self.labels_in, ignore_index)
        elif y.dtype.kind == "f":
            if self.return_token_accuracy:
                raise ValueError(
                    "return_token_accuracy needs class-index targets, not probabilities")
            if y.shape != self.logits_shape:
                raise ValueError(
                    f"probability target has shape {y.shape}, expected the logits' shape "
                    f"{self.logits_shape} (input {x.shape}, linear_weight {w.shape})")
            if ignore_index >= 0:
                raise ValueError(
                    f"ignore_index={ignore_index} is not supported with probability "
                    "targets (it must be negative)")
            self.probs = y
        else:
            raise TypeError(
                f"target has dtype {y.dtype}: expected integer class indices or floating "
                "class probabilities")
        self.weight = None
        if weight is not None:
            cw = as_ndarray(weight, "weight")
            float_dtypes(cw.dtype, "weight")
            if cw.shape != (self.n_classes,):
                raise ValueError(
                    f"weight has shape {cw.shape}, expected ({self.n_classes},) for "
                    f"linear_weight of shape {w.shape}")
            self.weight = contiguous(cw, self.compute)
        # False where no row is ignored (known from the labels' range), else
        # None: run_chunked looks
        self.any_ignored = None if self.labels is not None else False
        if self.labels is not None and self.labels.size:
            labels = self.labels
            # two reductions settle the common case (every label a class; a
            # small call is made of such steps)
            low, high = labels.min(), labels.max()
            if 0 <= low and high < self.n_classes:
                if not low <= ignore_index <= high:
                    self.any_ignored = False
                bad = None
            else:
                bad = ((labels < 0) | (labels >= self.n_classes)) & (labels != ignore_index)
            if bad is not None and bad.any():
                row = int(np.argmax(bad))
                index = row
                if len(positions) > 1:
                    index = ", ".join(str(int(i)) for i in np.unravel_index(row, positions))
                raise ValueError(
                    f"target[{index}] = {self.labels_in[row]} is not a class index in "
                    f"[0, {self.n_classes}) nor ignore_index ({ignore_index})")
        # the arrays in the compute dtype, C-contiguous (copies only if needed)
        self.x = contiguous(x, self.compute).reshape(self.n_rows, self.n_features)
        self.w = contiguous(w, self.compute)
        self.b = None if b is None else contiguous(b, self.compute)
        if self.probs is not None:
            self.probs = contiguous(self.probs, self.compute)
            if not self.extra:
                self.probs = self.probs.reshape(self.n_rows, self.n_classes)

    def threads(self):
        n = self.num_threads
        return _threads.get_num_threads() if n is None else n

