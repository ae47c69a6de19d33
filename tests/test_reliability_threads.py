"""Threads under stress (issue 6): many Python threads calling the kernels at once, each with
its own ``num_threads``; ``set_num_threads`` changed from one thread while others compute;
results bitwise identical at 1, 2, 3 and 8 (oversubscribed) OpenMP threads in every kernel and
every compiled instruction-set variant; absurd thread counts neither crash nor hang.

The kernels release the GIL, so Python threads really run them at the same time, each
starting its own OpenMP team.  Every input is >= 16384 elements (so the default thread count
applies) or the thread count is passed explicitly.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from arrays import HAVE_CYTHON, make_rng

import csoftmax
from csoftmax import _dispatch

needs_cython = pytest.mark.skipif(not HAVE_CYTHON, reason="threads run in the compiled kernels")

THREADS = (1, 2, 3, 8)
#: many rows; a few very wide rows; tiles of short rows; one row
SHAPES = {"tall": (2048, 40), "wide": (4, 40_000), "short-rows": (12_000, 7), "row": (1, 70_000),
          "small": (3, 50)}


def _problem(shape, dtype):
    n, c = shape
    rng = make_rng("reliability-threads", shape, np.dtype(dtype).name)
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    x[rng.random((n, c)) < 0.01] = -np.inf  # masked classes
    labels = rng.integers(0, c, size=n)
    labels[::5] = -100
    x[np.arange(n), np.maximum(labels, 0)] = 1.0  # never mask a target
    p = {
        "x": x,
        "labels": labels,
        "probs": rng.random((n, c)).astype(dtype),
        "weight": rng.uniform(0.5, 2.0, size=c).astype(dtype),
        "g": rng.standard_normal((n, c)).astype(dtype),
    }
    p["a"] = csoftmax.softmax(x)
    p["o"] = csoftmax.log_softmax(x)
    for v in p.values():
        v.flags.writeable = False
    return p


#: kernel id -> f(frontend, problem, num_threads)
KERNELS = {
    "softmax": lambda f, p, t: f.softmax(p["x"], num_threads=t),
    "softmax-axis0": lambda f, p, t: f.softmax(p["x"], axis=0, num_threads=t),
    "log_softmax": lambda f, p, t: f.log_softmax(p["x"], num_threads=t),
    "logsumexp": lambda f, p, t: f.logsumexp(p["x"], num_threads=t),
    "softmax_backward": lambda f, p, t: f.softmax_backward(p["g"], p["a"], num_threads=t),
    "log_softmax_backward": lambda f, p, t: f.log_softmax_backward(p["g"], p["o"],
                                                                   num_threads=t),
    "ce-index": lambda f, p, t: f.cross_entropy(
        p["x"], p["labels"], weight=p["weight"], label_smoothing=0.1, num_threads=t),
    "ce-prob": lambda f, p, t: f.cross_entropy(p["x"], p["probs"], reduction="sum",
                                               num_threads=t),
    "ce_grad-index": lambda f, p, t: f.cross_entropy_with_grad(
        p["x"], p["labels"], weight=p["weight"], label_smoothing=0.2, reduction="none",
        num_threads=t),
    "ce_grad-prob": lambda f, p, t: f.cross_entropy_with_grad(
        p["x"], p["probs"], weight=p["weight"], num_threads=t),
    # without class weights: the C fast path
    "ce-index-plain": lambda f, p, t: f.cross_entropy(p["x"], p["labels"], label_smoothing=0.1,
                                                      num_threads=t),
    "ce_grad-index-plain": lambda f, p, t: f.cross_entropy_with_grad(
        p["x"], p["labels"], reduction="none", num_threads=t),
}


def _bytes(result):
    parts = result if isinstance(result, tuple) else (result,)
    return [(np.asarray(r).dtype.str, np.asarray(r).shape, np.asarray(r).tobytes())
            for r in parts]


def _frontends():
    if not HAVE_CYTHON:
        return {}
    return _dispatch.cpu_frontends()


FRONTENDS = _frontends()


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape_id", sorted(SHAPES))
@pytest.mark.parametrize("variant", sorted(FRONTENDS))
def test_bitwise_identical_at_every_thread_count(variant, shape_id, dtype):
    frontend = FRONTENDS[variant]
    p = _problem(SHAPES[shape_id], dtype)
    for kernel_id, kernel in KERNELS.items():
        want = _bytes(kernel(frontend, p, 1))
        for t in THREADS[1:]:
            assert _bytes(kernel(frontend, p, t)) == want, (
                f"{variant} {kernel_id} {shape_id} {np.dtype(dtype).name}: "
                f"{t} threads differ from 1 thread"
            )


def _run_threads(n, target):
    """Run ``target(i)`` in n Python threads started together; re-raise the first error."""
    errors = []
    barrier = threading.Barrier(n)

    def wrapper(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a thread hangs"
    if errors:
        raise errors[0]


@needs_cython
def test_many_python_threads_with_different_thread_counts():
    """12 Python threads, each calling random kernels with random num_threads (1 .. 8 or the
    default) on shared inputs, and in place into its own buffers: every result is the
    one-thread result, bit for bit."""
    problems = {k: _problem(SHAPES[k], np.float32) for k in ("tall", "short-rows", "wide")}
    want = {(s, k): _bytes(kernel(csoftmax, p, 1))
            for s, p in problems.items() for k, kernel in KERNELS.items()}
    in_place = {s: _bytes(csoftmax.softmax(p["x"])) for s, p in problems.items()}

    def work(i):
        rnd = random.Random(i)
        for _ in range(12):
            s = rnd.choice(sorted(problems))
            k = rnd.choice(sorted(KERNELS))
            t = rnd.choice([None, 1, 2, 3, 8])
            got = _bytes(KERNELS[k](csoftmax, problems[s], t))
            assert got == want[s, k], f"thread {i}: {k} on {s} with {t} threads differs"
            buf = np.array(problems[s]["x"])  # softmax in place, into this thread's memory
            csoftmax.softmax(buf, out=buf, num_threads=t)
            assert _bytes(buf) == in_place[s], f"thread {i}: in-place softmax differs"

    _run_threads(12, work)


@needs_cython
def test_set_num_threads_while_other_threads_compute():
    """One thread flips the default thread count (1 .. 8, None) as fast as it can while four
    others compute with the default: no crash, and every result is the one-thread result."""
    p = _problem(SHAPES["tall"], np.float64)
    kernels = ["softmax", "log_softmax", "logsumexp", "ce_grad-index", "softmax_backward"]
    want = {k: _bytes(KERNELS[k](csoftmax, p, 1)) for k in kernels}
    old = csoftmax.get_num_threads()
    stop = threading.Event()
    flips = [0]

    def flipper():
        rnd = random.Random(0)
        while not stop.is_set():
            csoftmax.set_num_threads(rnd.choice([1, 2, 3, 8, None]))
            assert csoftmax.get_num_threads() >= 1
            flips[0] += 1

    def work(i):
        for j in range(25):
            k = kernels[(i + j) % len(kernels)]
            assert _bytes(KERNELS[k](csoftmax, p, None)) == want[k], f"{k} differs"

    flip = threading.Thread(target=flipper)
    flip.start()
    try:
        _run_threads(4, work)
    finally:
        stop.set()
        flip.join()
        csoftmax.set_num_threads(None)
    assert flips[0] > 0
    assert csoftmax.get_num_threads() == old


HUGE_THREADS = """
    import numpy as np, csoftmax
    x = np.ones((40_000, 64), np.float32)
    labels = np.zeros(40_000, np.int64)
    for n in (10**4, 10**6, 2**31 - 1, 2**62):
        r = csoftmax.softmax(x, num_threads=n)
        assert float(r.sum()) == 40_000.0, n
        loss, _ = csoftmax.cross_entropy_with_grad(x, labels, num_threads=n)
        csoftmax.set_num_threads(n)
        r = csoftmax.log_softmax(x)
    print("survived")
"""


@needs_cython
def test_absurd_thread_counts_do_not_crash():
    """num_threads=10**6 on 40,000 rows once made OpenMP try to start 40,000 threads
    (libgomp aborts, or a segfault); the team size is capped (fixed in 2ce5cce)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(HUGE_THREADS)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode,
                                                                proc.stderr[-2000:])


RACING_LABELS = """
    import threading, numpy as np, csoftmax
    N, C = 20000, 64
    x = np.random.default_rng(0).standard_normal((N, C)).astype(np.float32)
    labels = np.zeros(N, np.int64)
    stop = False
    def flip():  # a caller's data race: labels rewritten while the kernels read them
        while not stop:
            labels[:] = 10**12
            labels[:] = 0
    t = threading.Thread(target=flip)
    t.start()
    try:
        for i in range(2000):
            try:
                csoftmax.cross_entropy_with_grad(x, labels, num_threads=2)
            except ValueError:
                pass
    finally:
        stop = True
        t.join()
    print("survived")
"""


@needs_cython
def test_labels_rewritten_by_another_thread_do_not_crash():
    """A data race in the caller is not supported, but must not become an out-of-bounds
    access: class indices were validated once, then read again by the kernels, so labels
    rewritten in between by another thread made them index far outside the logits (a
    segfault within a second).  Fixed in 2ffe514: the kernels read each label once and never
    index with an out-of-range one (the row gets NaN)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RACING_LABELS)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode,
                                                                proc.stderr[-2000:])
