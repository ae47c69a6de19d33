"""The default thread count: threadpoolctl.threadpool_limits really limits csoftmax (also
with torch's libgomp loaded), OMP_NUM_THREADS, CPU affinity and the cgroup CPU quota."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import csoftmax
from csoftmax import _threads

needs_cython = pytest.mark.skipif(
    csoftmax.BACKEND != "cython", reason="only the compiled kernels run OpenMP threads")
linux_threads = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(csoftmax.__file__)))


def child(code, *, prefix=(), **env_updates):
    """Run ``code`` in a fresh interpreter (no OMP_NUM_THREADS unless given); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(env_updates)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    done = subprocess.run([*prefix, sys.executable, "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# ---------------------------------------------------------------------------------------------
# threadpoolctl

@pytest.fixture
def restore_threads():
    """The default thread state (no set_num_threads), restored afterwards."""
    saved = _threads._num_threads, _threads._cpu_quota_cache
    csoftmax.set_num_threads(None)
    yield
    _threads._num_threads, _threads._cpu_quota_cache = saved


@needs_cython
def test_threadpool_limits_in_process(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = csoftmax.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1):
        assert csoftmax.get_num_threads() == 1
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert csoftmax.get_num_threads() == 1
    assert csoftmax.get_num_threads() == before


# Counts the OS threads of the process before and after a large call: OpenMP starts its
# workers on the first parallel region and keeps them.
COUNT_WORKERS = """
import os, numpy as np, threadpoolctl
{imports}
def threads():
    return len(os.listdir("/proc/self/task"))
x = np.random.default_rng(0).standard_normal((4096, 256))
before = threads()
with threadpoolctl.threadpool_limits(limits=1):
    inside = csoftmax.get_num_threads()
    csoftmax.softmax(x); csoftmax.cross_entropy_with_grad(x, np.zeros(4096, np.int64))
    limited = threads() - before
csoftmax.softmax(x)
print(inside, limited, threads() - before, csoftmax.get_num_threads())
"""


@needs_cython
@linux_threads
@pytest.mark.parametrize("imports", ["import csoftmax", "import torch, csoftmax"],
                         ids=["csoftmax", "torch-first"])
def test_threadpool_limits_stop_worker_threads(imports):
    """Under threadpool_limits(1) no OpenMP worker starts; after it, OMP_NUM_THREADS=2 starts
    one.  torch ships its own libgomp.so.1; imported first, it is the runtime csoftmax's
    kernels get, and the limit still reaches them."""
    pytest.importorskip("threadpoolctl")
    if "torch" in imports:
        pytest.importorskip("torch")
    code = COUNT_WORKERS.format(imports=imports)
    inside, limited, unlimited, after = map(int, child(code, OMP_NUM_THREADS="2").split())
    assert (inside, limited) == (1, 0)
    if after >= 2:  # not capped by a CPU quota of 1
        assert unlimited >= 1


# ---------------------------------------------------------------------------------------------
# OMP_NUM_THREADS and CPU affinity

PRINT_THREADS = "import csoftmax; print(csoftmax.get_num_threads())"


def test_omp_num_threads_one():
    assert child(PRINT_THREADS, OMP_NUM_THREADS="1") == "1"


def test_sched_setaffinity_one_cpu():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no os.sched_setaffinity here")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            + PRINT_THREADS)
    assert child(code) == "1"


def test_taskset_one_cpu():
    taskset = shutil.which("taskset")
    if taskset is None or not hasattr(os, "sched_getaffinity"):
        pytest.skip("no taskset here")
    cpu = str(min(os.sched_getaffinity(0)))
    assert child(PRINT_THREADS, prefix=(taskset, "-c", cpu)) == "1"


# ---------------------------------------------------------------------------------------------
# cgroup CPU quota


def fake_cgroups(tmp_path, files, own=None):
    """A fake /sys/fs/cgroup tree and /proc/self/cgroup; returns their paths."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(own or "0::/\n")
    return str(root), str(proc)


@pytest.mark.parametrize(("files", "own", "expected"), [
    ({}, None, None),
    ({"cpu.max": "max 100000"}, None, None),
    ({"cpu.max": "200000 100000"}, None, 2),
    ({"cpu.max": "150000 100000"}, None, 2),  # 1.5 CPUs: rounded up
    ({"cpu.max": "50000 100000"}, None, 1),
    # v2, the process in a nested cgroup: the tightest of it and its parents
    ({"cpu.max": "max 100000", "a/cpu.max": "300000 100000", "a/b/cpu.max": "max 100000"},
     "0::/a/b\n", 3),
    ({"a/cpu.max": "800000 100000", "a/b/cpu.max": "400000 100000"}, "0::/a/b\n", 4),
    # v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
     "4:cpu,cpuacct:/\n", None),
    ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"},
     "4:cpu,cpuacct:/\n", 3),
    ({"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "100000",
      "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000"}, "4:cpu,cpuacct:/docker/x\n", 1),
    ({"cpu.max": "garbage"}, None, None),
])
def test_cgroup_cpu_quota(tmp_path, files, own, expected):
    root, proc = fake_cgroups(tmp_path, files, own)
    assert _threads.cgroup_cpu_quota(root=root, proc_cgroup=proc) == expected


def test_quota_caps_the_default_only(restore_threads, monkeypatch):
    monkeypatch.setattr(_threads, "_default_source", lambda: 8)
    _threads._cpu_quota_cache = None
    csoftmax.set_num_threads(None)
    assert csoftmax.get_num_threads() == 8
    _threads._cpu_quota_cache = 2
    assert csoftmax.get_num_threads() == 2
    csoftmax.set_num_threads(5)  # an explicit setting is used as given
    assert csoftmax.get_num_threads() == 5


def test_quota_of_this_machine_is_respected():
    quota = _threads._cpu_quota()
    if quota is None:
        pytest.skip("no cgroup CPU quota here")
    assert int(child(PRINT_THREADS)) <= quota
