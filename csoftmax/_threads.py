"""The thread setting: csoftmax's only global mutable state."""

from __future__ import annotations

from ._validation import check_num_threads, env_num_threads

_num_threads = None  # None: follow OpenMP's default (OMP_NUM_THREADS, threadpoolctl)
_default_source = env_num_threads  # replaced by the compiled kernels' omp_get_max_threads


def set_num_threads(n):
    """Set the default number of threads of every csoftmax call.

    Parameters
    ----------
    n : int or None
        Threads (>= 1); None returns to the default: OpenMP's (which follows
        ``OMP_NUM_THREADS`` and ``threadpoolctl.threadpool_limits``), else the
        number of usable cores.

    Examples
    --------
    >>> import csoftmax
    >>> old = csoftmax.get_num_threads()
    >>> csoftmax.set_num_threads(1)
    >>> csoftmax.get_num_threads()
    1
    >>> csoftmax.set_num_threads(None)
    """
    global _num_threads
    _num_threads = check_num_threads(n)


def get_num_threads():
    """The default number of threads of csoftmax calls (see :func:`set_num_threads`).

    Examples
    --------
    >>> import csoftmax
    >>> csoftmax.get_num_threads() >= 1
    True
    """
    n = _num_threads
    return n if n is not None else max(1, int(_default_source()))
