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

from . import _linear as _linear_api
from ._dispatch import FRONTENDS

_twin = FRONTENDS["numpy"]
softmax = _twin.softmax
log_softmax = _twin.log_softmax
logsumexp = _twin.logsumexp
softmax_backward = _twin.softmax_backward
log_softmax_backward = _twin.log_softmax_backward
cross_entropy = _twin.cross_entropy
cross_entropy_with_grad = _twin.cross_entropy_with_grad


def _linear(with_grad, input, linear_weight, target, **options):
    return _linear_api.call(_twin, input, linear_weight, target, with_grad, **options)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0,
                         z_loss=0.0, softcap=None, return_z_loss=False,
                         return_token_accuracy=False, num_threads=None, chunk_size=None):
    return _linear(False, **locals())  # the parameters, by name


def linear_cross_entropy_with_grad(input, linear_weight, target, *, linear_bias=None,
                                   weight=None, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.0, z_loss=0.0, softcap=None,
                                   return_z_loss=False, return_token_accuracy=False,
                                   num_threads=None, chunk_size=None):
    return _linear(True, **locals())


linear_cross_entropy.__doc__ = _linear_api.linear_cross_entropy.__doc__
linear_cross_entropy_with_grad.__doc__ = _linear_api.linear_cross_entropy_with_grad.__doc__

__all__ = ["cross_entropy", "cross_entropy_with_grad", "linear_cross_entropy",
           "linear_cross_entropy_with_grad", "log_softmax", "log_softmax_backward",
           "logsumexp", "softmax", "softmax_backward"]
