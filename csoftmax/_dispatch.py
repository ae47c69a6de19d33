"""Choose the kernels: compiled (the fastest instruction set this CPU runs) or
the NumPy twin.

``CSOFTMAX_BACKEND=numpy`` forces the twin; ``CSOFTMAX_CPU=baseline|avx2|avx512``
forces one compiled variant (an unsupported or missing one is an error, so a
forced choice is never silently ignored).  When the extension cannot be
imported at all the twin is used with a ``RuntimeWarning``.
"""

from __future__ import annotations

import importlib
import os
import warnings

from . import _half, _numpy_backend, _threads
from ._api import Frontend

VARIANTS = {"baseline": "_kernels", "avx2": "_kernels_avx2", "avx512": "_kernels_avx512"}


def _load_variant(name):
    return importlib.import_module(f"csoftmax.{VARIANTS[name]}")


def available_cpu_paths():
    """Compiled variants that exist and that this CPU can run, slowest first."""
    try:
        base = _load_variant("baseline")
    except ImportError:
        return []
    features = base.cpu_features()
    paths = ["baseline"]
    for name in ("avx2", "avx512"):
        if features[name]:
            try:
                _load_variant(name)
            except ImportError:
                continue
            paths.append(name)
    return paths


def _select():
    """(backend name, kernels, cpu path, reason the compiled kernels are absent)."""
    if os.environ.get("CSOFTMAX_BACKEND", "").lower() == "numpy":
        return "numpy", _numpy_backend, None, "CSOFTMAX_BACKEND=numpy"
    try:
        _load_variant("baseline")
    except ImportError as exc:
        warnings.warn(
            f"csoftmax: compiled kernels unavailable ({exc}); using the NumPy fallback",
            RuntimeWarning,
            stacklevel=3,
        )
        return "numpy", _numpy_backend, None, str(exc)
    paths = available_cpu_paths()
    forced = os.environ.get("CSOFTMAX_CPU", "").lower()
    if forced:
        if forced not in VARIANTS:
            raise ImportError(f"CSOFTMAX_CPU={forced!r}: expected one of {sorted(VARIANTS)}")
        if forced not in paths:
            raise ImportError(f"CSOFTMAX_CPU={forced!r} is not built or not supported here")
        path = forced
    else:
        path = paths[-1]
    return "cython", _load_variant(path), path, None


BACKEND, KERNELS, CPU_PATH, FALLBACK_REASON = _select()
if BACKEND == "cython" and KERNELS.build_info()["openmp"]:
    # OpenMP's own default follows OMP_NUM_THREADS, the CPU affinity and
    # threadpoolctl.threadpool_limits (which calls omp_set_num_threads)
    _threads._default_source = KERNELS.default_threads
if BACKEND == "cython":
    # the paths without a 16-bit kernel round their float32 results with the
    # kernels' conversion (see _half.store)
    _half._compiled_store = KERNELS.half_store_array

def restore_frontend(name):
    """Unpickle a frontend (and so its bound methods: the NumPy twin's public functions)."""
    if name in FRONTENDS:
        return FRONTENDS[name]
    return cpu_frontends()[name.split("-", 1)[1]]


#: Every usable frontend, by name, for tests and benchmarks that compare them.
FRONTENDS = {"numpy": Frontend(_numpy_backend, "numpy", restore=restore_frontend)}
if BACKEND == "cython":
    FRONTENDS["cython"] = Frontend(KERNELS, "cython", restore=restore_frontend)
ACTIVE = FRONTENDS[BACKEND]


def cpu_frontends():
    """One frontend per compiled instruction-set variant this CPU runs."""
    return {p: Frontend(_load_variant(p), f"cython-{p}", restore=restore_frontend)
            for p in available_cpu_paths()}
