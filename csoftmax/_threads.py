"""The thread setting: csoftmax's only global mutable state."""

from __future__ import annotations

import math
import os

from ._validation import check_num_threads, env_num_threads

_num_threads = None  # None: follow OpenMP's default (OMP_NUM_THREADS, threadpoolctl)
_default_source = env_num_threads  # replaced by the compiled kernels' omp_get_max_threads
_UNREAD = object()
_cpu_quota_cache = _UNREAD


def set_num_threads(n):
    """Set the default number of threads of every csoftmax call.

    Parameters
    ----------
    n : int or None
        Threads (>= 1), used as given; None returns to the default: OpenMP's
        (which follows ``OMP_NUM_THREADS``, the CPU affinity mask and
        ``threadpoolctl.threadpool_limits``), else the number of usable cores,
        capped by the cgroup CPU quota (containers) where there is one.

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
    if n is not None:
        return n
    n = max(1, int(_default_source()))
    quota = _cpu_quota()
    return n if quota is None else min(n, quota)


def _cpu_quota():
    """The cgroup CPU quota of this process, read once (None: no quota)."""
    global _cpu_quota_cache
    if _cpu_quota_cache is _UNREAD:
        try:
            _cpu_quota_cache = cgroup_cpu_quota()
        except (OSError, ValueError):  # pragma: no cover - unreadable cgroup files
            _cpu_quota_cache = None
    return _cpu_quota_cache


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _quota_cpus(quota, period):
    """``ceil(quota / period)`` CPUs (at least 1), or None for no limit."""
    try:
        q, p = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    if q <= 0 or p <= 0:  # "max" (v2) is not an int; -1 (v1) is no limit
        return None
    return max(1, math.ceil(q / p))


def _own_cgroups(proc_cgroup):
    """{controller: path} of this process from /proc/self/cgroup ("" is the v2 hierarchy)."""
    text = _read(proc_cgroup) or ""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                paths[controller] = parts[2]
    return paths


def _dirs_up(base, rel):
    """``base/rel`` and each of its parents up to ``base``, deepest first."""
    parts = [p for p in (rel or "/").split("/") if p]
    return [os.path.join(base, *parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_quota(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """CPUs allowed by the cgroup CPU bandwidth quota, rounded up; None without one.

    cgroup v2: ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"); cgroup v1:
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``.  The process's own
    cgroup and each of its parents are read and the tightest quota wins (a
    container usually sees its own limit at the root of the mount).
    """
    own = _own_cgroups(proc_cgroup)
    limits = []
    for d in _dirs_up(root, own.get("")):  # v2 (unified hierarchy)
        value = _read(os.path.join(d, "cpu.max"))
        if value:
            fields = value.split()
            if len(fields) == 2:
                limits.append(_quota_cpus(*fields))
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # v1
        base = os.path.join(root, sub)
        if not os.path.isdir(base):
            continue
        for d in _dirs_up(base, own.get("cpu")):
            limits.append(_quota_cpus(_read(os.path.join(d, "cpu.cfs_quota_us")),
                                      _read(os.path.join(d, "cpu.cfs_period_us"))))
        break
    limits = [n for n in limits if n is not None]
    return min(limits) if limits else None
