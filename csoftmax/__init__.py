"""csoftmax: fast, correct softmax and fused cross-entropy for NumPy on the CPU.

Softmax, log-softmax, logsumexp, their backward passes, and cross-entropy with
its gradient computed in the same pass, in Cython kernels that release the GIL
and run rows in parallel with OpenMP.  Results follow PyTorch (cross-entropy)
and SciPy (softmax, logsumexp); a NumPy fallback computes the same where the
extension is missing.  See the README, the documentation (docs/) and
``csoftmax.show_config()``.
"""

from __future__ import annotations

import platform
import sys

from . import _dispatch, slow  # noqa: F401 - csoftmax.slow: the NumPy twin's functions
from ._api import CrossEntropyGradResult, CrossEntropyResult
from ._linear import (
    LinearCrossEntropyGradResult,
    linear_cross_entropy,
    linear_cross_entropy_with_grad,
)
from ._threads import get_num_threads, set_num_threads
from ._version import __version__

BACKEND = _dispatch.BACKEND

_active = _dispatch.ACTIVE
softmax = _active.softmax
log_softmax = _active.log_softmax
logsumexp = _active.logsumexp
softmax_backward = _active.softmax_backward
log_softmax_backward = _active.log_softmax_backward
cross_entropy = _active.cross_entropy
cross_entropy_with_grad = _active.cross_entropy_with_grad
if BACKEND == "cython" and hasattr(_dispatch.KERNELS, "bind_public"):
    # the compiled kernels' C-level twins of these methods (src/public.pxi):
    # the same signatures, the fast path tried without a Python frame, every
    # other call handed to the method; documented and pickled as csoftmax's
    for _name, _function in _dispatch.KERNELS.bind_public(_active).items():
        _function.__doc__ = getattr(type(_active), _name).__doc__
        _function.__module__ = __name__
        globals()[_name] = _function
    del _name, _function


def config():
    """The build and runtime facts that :func:`show_config` prints, as a dict.

    Returns
    -------
    dict
        ``version``, ``backend`` (``"cython"`` or ``"numpy"``), ``fallback_reason``,
        ``openmp``, ``simd`` (the compiled kernels' SIMD path), ``cpu_paths_available``,
        ``compiler``, ``default_threads``, ``python``, ``numpy``.

    Examples
    --------
    >>> import csoftmax
    >>> cfg = csoftmax.config()
    >>> cfg["backend"] == csoftmax.BACKEND, cfg["version"] == csoftmax.__version__
    (True, True)
    """
    import numpy as np

    kernels = _dispatch.KERNELS
    info = dict(kernels.build_info())
    return {
        "version": __version__,
        "backend": BACKEND,
        "fallback_reason": _dispatch.FALLBACK_REASON,
        "openmp": info["openmp"],
        "simd": _dispatch.CPU_PATH or info["simd"],
        "cpu_paths_available": _dispatch.available_cpu_paths(),
        "compiler": getattr(kernels, "COMPILER", None) or platform.python_compiler(),
        "default_threads": get_num_threads(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }


def show_config():
    """Print version, backend, compiler, OpenMP on/off, SIMD path and default threads.

    Examples
    --------
    >>> import csoftmax
    >>> csoftmax.show_config()  # doctest: +ELLIPSIS
    csoftmax ...
    """
    cfg = config()
    print(f"csoftmax {cfg['version']}")
    for key in ("backend", "openmp", "simd", "cpu_paths_available", "compiler",
                "default_threads", "python", "numpy"):
        print(f"  {key:20s} {cfg[key]}")
    if cfg["fallback_reason"]:
        print(f"  {'fallback_reason':20s} {cfg['fallback_reason']}")


__all__ = [
    "BACKEND",
    "CrossEntropyGradResult",
    "CrossEntropyResult",
    "LinearCrossEntropyGradResult",
    "__version__",
    "config",
    "cross_entropy",
    "cross_entropy_with_grad",
    "get_num_threads",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "set_num_threads",
    "show_config",
    "softmax",
    "softmax_backward",
]
