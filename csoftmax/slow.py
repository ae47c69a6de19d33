"""The public functions computed by the NumPy twin (as Bottleneck's ``bottleneck.slow``).

The same signatures, results and errors as ``csoftmax.softmax`` ...
``csoftmax.linear_cross_entropy_with_grad``, over the NumPy row kernels of
``csoftmax._numpy_backend`` instead of the compiled ones: the reference the
tests hold the compiled kernels to, and what ``CSOFTMAX_BACKEND=numpy`` runs.

Examples
--------
>>> import numpy as np, csoftmax, csoftmax.slow
>>> x = np.array([[1.0, 2.0, 3.0]])
>>> bool(np.allclose(csoftmax.slow.softmax(x), csoftmax.softmax(x)))
True
"""

from __future__ import annotations

import functools

from . import _linear
from ._dispatch import FRONTENDS

_twin = FRONTENDS["numpy"]
softmax = _twin.softmax
log_softmax = _twin.log_softmax
logsumexp = _twin.logsumexp
softmax_backward = _twin.softmax_backward
log_softmax_backward = _twin.log_softmax_backward
cross_entropy = _twin.cross_entropy
cross_entropy_with_grad = _twin.cross_entropy_with_grad


@functools.wraps(_linear.linear_cross_entropy)
def linear_cross_entropy(input, linear_weight, target, **options):
    return _linear.call(_twin, input, linear_weight, target, False, **options)


@functools.wraps(_linear.linear_cross_entropy_with_grad)
def linear_cross_entropy_with_grad(input, linear_weight, target, **options):
    return _linear.call(_twin, input, linear_weight, target, True, **options)


__all__ = ["cross_entropy", "cross_entropy_with_grad", "linear_cross_entropy",
           "linear_cross_entropy_with_grad", "log_softmax", "log_softmax_backward",
           "logsumexp", "softmax", "softmax_backward"]
