"""The public functions, written once over a kernel module.

``Frontend(kernels)`` binds the public API to one set of row kernels: the
compiled ``csoftmax._kernels*`` modules or the NumPy twin
``csoftmax._numpy_backend``.  Both kernel sets take the same arguments
(C-contiguous 2-D float32/float64 arrays, already validated), so validation,
axis handling, dtype rules, ``out=`` and reductions live once, in the
operation families that ``Frontend`` binds: ``_softmax_api`` (softmax,
log_softmax, logsumexp, the backward functions) and ``_cross_entropy_api``
(cross_entropy, cross_entropy_with_grad), over ``_runner`` (thread counts and
layouts).  The two backends differ only in how a row is computed.
"""

from __future__ import annotations

import numpy as np

from . import _threads
from ._cross_entropy_api import (  # noqa: F401 - re-exported
    CrossEntropyFunctions,
    CrossEntropyGradResult,
    CrossEntropyResult,
)
from ._runner import (  # noqa: F401 - re-exported: the thread policy's constants
    COLUMN_CHUNK,
    MAX_THREADS,
    SMALL_WORK,
    STRIDED_MIN_UNIT_BYTES,
    _threads_for,
    _threads_strided,
)
from ._softmax_api import SoftmaxFunctions


def _declined(*args):
    """The fast path of a kernel set that has none: every call takes the full path."""
    return None


_SIGNATURE_DTYPES = {
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "int32_t": np.dtype(np.int32), "int64_t": np.dtype(np.int64),
}


def _specialisations(kernel):
    """{(dtype, ...): callable} of a Cython kernel fused over float/double (and
    int32/int64 labels), keyed by the dtypes of its fused arguments; {} for a
    plain function (the NumPy twin): the caller then calls the kernel itself."""
    sigs = getattr(kernel, "__signatures__", None) or {}
    return {
        tuple(_SIGNATURE_DTYPES[part] for part in sig.split("|")): specialised
        for sig, specialised in sigs.items()
    }


class Frontend(SoftmaxFunctions, CrossEntropyFunctions):
    """The public API over one kernel module (see the module docstring)."""

    def __reduce__(self):
        # the methods (the NumPy twin's public functions; the compiled backend's
        # are C-level functions pickled by name, see src/public.pxi): pickling them
        # (multiprocessing, dask.distributed, joblib) pickles the frontend by name,
        # restored by the function that csoftmax._dispatch gave its frontends
        if self._restore is None:
            raise TypeError(f"the frontend {self.name!r} was not made by csoftmax._dispatch "
                            "and cannot be pickled")
        return self._restore, (self.name,)

    def __init__(self, kernels, name, fast=True, restore=None):
        self.kernels = kernels
        self.name = name
        self._restore = restore
        # the fused kernels' float/double specialisations, to skip Cython's
        # run-time dispatch on the full path
        self._by_dtype = {
            op: _specialisations(getattr(kernels, op))
            for op in ("softmax_rows", "log_softmax_rows", "label_summary",
                       "cross_entropy_index_rows", "cross_entropy_prob_rows")
        }
        # The compiled kernels' C fast path for the common call (see
        # src/fastpath.pxi): it returns None for anything else, and the full
        # path below runs.  fast=False leaves it out (tests compare the two).
        self._fast_rows = self._fast_logsumexp = self._fast_backward = _declined
        self._fast_cross_entropy = self._fast_linear_cross_entropy = _declined
        self._fast_masked = _declined
        if fast and hasattr(kernels, "fast_rows"):
            kernels.configure(SMALL_WORK, MAX_THREADS, _threads.get_num_threads,
                              STRIDED_MIN_UNIT_BYTES)
            self._fast_rows = kernels.fast_rows
            self._fast_logsumexp = kernels.fast_logsumexp
            self._fast_backward = kernels.fast_backward
            self._fast_cross_entropy = kernels.fast_cross_entropy
            self._fast_masked = kernels.fast_masked
            self._fast_linear_cross_entropy = kernels.fast_linear_cross_entropy

    def _kernel(self, op, *dtypes):
        """The kernel ``op`` specialised for ``dtypes`` (the fused arguments'),
        or the kernel itself, which then dispatches on its arguments."""
        return self._by_dtype[op].get(dtypes) or getattr(self.kernels, op)

