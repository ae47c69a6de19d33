"""Threads: bitwise-identical results at every thread count, concurrent calls from several
Python threads, and the thread setting (set/get, defaults, threadpoolctl)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from arrays import (
    FLOAT_DTYPES,
    FLOAT_IDS,
    HAVE_CYTHON,
    assert_bitwise_equal,
    assert_close,
    make_rng,
)

import csoftmax
from csoftmax._dispatch import FRONTENDS

needs_cython = pytest.mark.skipif(not HAVE_CYTHON, reason="threads run in the compiled kernels")

THREADS = (1, 2, 3, 8)
#: Large enough to pass any small-work threshold: many rows, a few very wide rows, a middle.
#: Rows fewer than two per thread are split into column chunks (wide, one-row; chunks at 3 and
#: 8 threads but not at 2), the chunk count of "chunks" is 4 with a last chunk of 5 columns.
SHAPES = {
    "tall": (4000, 96),
    "short": (30000, 10),  # tiles of short rows (and a loss summed tile by tile)
    "wide": (3, 250_000),
    "one-row": (1, 600_000),
    "chunks": (5, 3 * 16384 + 5),
    "mid": (96, 2000),
}


@functools.cache
def problem(shape_id, dtype):
    """Inputs for every kernel: logits with masked (-inf) classes, labels with ignored rows."""
    n, c = SHAPES[shape_id]
    rng = make_rng("threads", shape_id, np.dtype(dtype).name)
    x = (rng.standard_normal((n, c)) * 4).astype(dtype)
    labels = rng.integers(0, c, size=n)
    labels[::7] = -100
    masked = rng.random((n, c)) < 0.01
    masked[np.arange(n), np.maximum(labels, 0)] = False
    x[masked] = -np.inf
    probs = rng.random((n, c)).astype(dtype)
    weight = rng.uniform(0.5, 2, size=c).astype(dtype)
    g = rng.standard_normal((n, c)).astype(dtype)
    soft = FRONTENDS["numpy"].softmax(x)
    log_soft = FRONTENDS["numpy"].log_softmax(x)
    for a in (x, labels, probs, weight, g, soft, log_soft):
        a.flags.writeable = False
    return dict(x=x, labels=labels, probs=probs, weight=weight, g=g, soft=soft, log_soft=log_soft)


#: kernel id -> f(frontend, inputs, num_threads) -> array or tuple of arrays
KERNELS = {
    "softmax": lambda fe, p, t: fe.softmax(p["x"], num_threads=t),
    "softmax-axis0": lambda fe, p, t: fe.softmax(p["x"], axis=0, num_threads=t),
    "log_softmax": lambda fe, p, t: fe.log_softmax(p["x"], num_threads=t),
    "logsumexp": lambda fe, p, t: fe.logsumexp(p["x"], num_threads=t),
    "logsumexp-axisNone": lambda fe, p, t: fe.logsumexp(p["x"], axis=None, num_threads=t),
    "softmax_backward": lambda fe, p, t: fe.softmax_backward(p["g"], p["soft"], num_threads=t),
    "log_softmax_backward": lambda fe, p, t: fe.log_softmax_backward(
        p["g"], p["log_soft"], num_threads=t
    ),
    "ce-int-mean": lambda fe, p, t: fe.cross_entropy(
        p["x"], p["labels"], weight=p["weight"], label_smoothing=0.1, num_threads=t
    ),
    "ce-prob-sum": lambda fe, p, t: fe.cross_entropy(
        p["x"], p["probs"], reduction="sum", num_threads=t
    ),
    "ce_grad-int-mean": lambda fe, p, t: fe.cross_entropy_with_grad(
        p["x"], p["labels"], weight=p["weight"], label_smoothing=0.1, num_threads=t
    ),
    "ce_grad-int-none": lambda fe, p, t: fe.cross_entropy_with_grad(
        p["x"], p["labels"], reduction="none", num_threads=t
    ),
    "ce_grad-prob-mean": lambda fe, p, t: fe.cross_entropy_with_grad(
        p["x"], p["probs"], weight=p["weight"], label_smoothing=0.2, num_threads=t
    ),
    # each kernel path of a row: smoothing with and without weights, loss alone or with grad
    "ce-int-smooth-none": lambda fe, p, t: fe.cross_entropy(
        p["x"], p["labels"], label_smoothing=0.1, reduction="none", num_threads=t
    ),
    "ce_grad-int-smooth-none": lambda fe, p, t: fe.cross_entropy_with_grad(
        p["x"], p["labels"], label_smoothing=0.1, reduction="none", num_threads=t
    ),
    "ce-prob-weighted-none": lambda fe, p, t: fe.cross_entropy(
        p["x"], p["probs"], weight=p["weight"], label_smoothing=0.2, reduction="none",
        num_threads=t,
    ),
    "ce_grad-prob-none": lambda fe, p, t: fe.cross_entropy_with_grad(
        p["x"], p["probs"], reduction="none", num_threads=t
    ),
}


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def assert_same_results(a, b, what):
    for i, (x, y) in enumerate(zip(as_tuple(a), as_tuple(b))):
        assert_bitwise_equal(x, y, f"{what}[{i}]")


@needs_cython
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
def test_bitwise_identical_at_every_thread_count(kernel, shape_id, dtype):
    fe, p = FRONTENDS["cython"], problem(shape_id, dtype)
    first = KERNELS[kernel](fe, p, THREADS[0])
    for t in THREADS[1:]:
        assert_same_results(KERNELS[kernel](fe, p, t), first, f"{kernel} at {t} threads")


@needs_cython
@pytest.mark.parametrize("shape_id", ["tall", "chunks"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_in_place_bitwise_identical_at_every_thread_count(shape_id, smoothing):
    fe, p = FRONTENDS["cython"], problem(shape_id, np.float32)
    expected = fe.softmax(p["x"], num_threads=1)
    e_loss, e_grad = fe.cross_entropy_with_grad(
        p["x"], p["labels"], label_smoothing=smoothing, num_threads=1
    )
    for t in THREADS:
        x = p["x"].copy()
        fe.softmax(x, out=x, num_threads=t)
        assert_bitwise_equal(x, expected, f"in-place softmax at {t} threads")
        x = p["x"].copy()
        loss, grad = fe.cross_entropy_with_grad(
            x, p["labels"], label_smoothing=smoothing, out=x, num_threads=t
        )
        assert_bitwise_equal(grad, e_grad, f"in-place grad at {t} threads")
        assert_bitwise_equal(loss, e_loss, f"in-place loss at {t} threads")


def _special_chunk_rows(dtype):
    """Rows of 3 chunks and a bit, with special values in one chunk only: each row's result
    hinges on combining the chunks (a NaN, +inf, -inf everywhere, the maximum 0 as -0 in one
    chunk and +0 in another, huge values that underflow the rest).  NaN results must match in
    their bits too: a sum of two NaNs keeps one of them, the same one on every path."""
    n = 3 * 16384 + 7
    rng = make_rng("special chunks", np.dtype(dtype).name)
    x = (rng.standard_normal((7, n)) * 3).astype(dtype)
    x[0, 20000] = np.nan
    x[1, 40000] = np.inf
    x[2] = -np.inf
    x[3] = -np.abs(x[3]) - 1
    x[3, 5] = -0.0
    x[3, 30000] = 0.0
    x[4, n - 1] = 1e4 if dtype == np.float64 else 1e3
    x[5, 16384] = np.finfo(dtype).max
    x[5, 16383] = -np.finfo(dtype).max
    x[6, 3] = np.inf  # NaN everywhere, from inf - inf in one chunk and a NaN in another
    x[6, 40000] = np.nan
    labels = np.array([1, 2, 3, 30000, n - 1, 16383, 0])
    return x, labels


@needs_cython
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
@pytest.mark.parametrize(
    "rows", [slice(None), slice(3, 5), slice(5, 7)], ids=["7rows", "rows3-4", "rows5-6"]
)
def test_split_rows_with_special_values(dtype, rows):
    """Split at 8 threads (7 rows) or at 2, 3 and 8 (2 rows): the same bits as one thread,
    and the NumPy backend's values."""
    fe, ref = FRONTENDS["cython"], FRONTENDS["numpy"]
    x, labels = _special_chunk_rows(dtype)
    x, labels = x[rows], labels[rows]
    with np.errstate(invalid="ignore"):  # NaN and inf give NaN targets: one more special row
        probs = np.abs(x[::-1]) % 1
    calls = {
        "softmax": lambda f, t: f.softmax(x, num_threads=t),
        "log_softmax": lambda f, t: f.log_softmax(x, num_threads=t),
        "logsumexp": lambda f, t: f.logsumexp(x, num_threads=t),
        "ce_grad": lambda f, t: f.cross_entropy_with_grad(
            x, labels, label_smoothing=0.1, reduction="none", num_threads=t
        ),
        "ce_grad-prob": lambda f, t: f.cross_entropy_with_grad(
            x, probs, reduction="none", num_threads=t
        ),
    }
    with np.errstate(all="ignore"):
        for name, call in calls.items():
            first = call(fe, 1)
            for t in (2, 3, 8):
                assert_same_results(call(fe, t), first, f"{name} at {t} threads")
            for got, want in zip(as_tuple(first), as_tuple(call(ref, 1))):
                assert_close(got, want, dtype, what=f"{name} vs the NumPy backend")


@needs_cython
def test_team_size_counts_column_chunks():
    from csoftmax import _api

    for module in {fe.kernels for name, fe in FRONTENDS.items() if name != "numpy"}:
        assert module.COLUMN_CHUNK == _api.COLUMN_CHUNK
    chunk = _api.COLUMN_CHUNK
    assert _api._threads_for(1, 4 * chunk, 8) == 4  # one row: as many threads as chunks
    assert _api._threads_for(1, chunk, 8) == 1  # one chunk: one thread
    assert _api._threads_for(3, chunk + 1, 8) == 6
    assert _api._threads_for(1000, 1000, 8) == 8
    # the backward kernels do not split rows: no idle team for one wide row
    assert _api._threads_for(1, 4 * chunk, 8, split_rows=False) == 1
    assert _api._threads_for(3, 4 * chunk, 8, split_rows=False) == 3
    # over a middle axis: units of one cache line of positions, the backward
    # kernels' narrowest blocks (4096 classes of 64 floats: 4 blocks, where
    # the forward's 256-byte blocks make one)
    assert _api._threads_strided(1, 4096, 64, 4, 8) == 4
    assert _api._threads_strided(3, 4096, 64, 4, 64) == 12


@needs_cython
def test_concurrent_calls_from_python_threads():
    """Calls release the GIL and run at once from several Python threads: each must still get
    exactly its own answer."""
    fe = FRONTENDS["cython"]
    jobs = [
        (k, s, d, t) for k in KERNELS for s in ("tall", "mid") for d in FLOAT_DTYPES for t in (1, 2)
    ]
    expected = {job: KERNELS[job[0]](fe, problem(job[1], job[2]), 1) for job in jobs}

    def run(job):
        return job, KERNELS[job[0]](fe, problem(job[1], job[2]), job[3])

    with ThreadPoolExecutor(max_workers=6) as pool:
        for job, result in pool.map(run, jobs * 2):
            assert_same_results(result, expected[job], f"{job} from a Python thread")


#: One call of each family of thread loops, float32 (the schedule is shared by the dtypes):
#: rows, tiles, backward, both cross-entropies, a class axis in the middle (strided), 16-bit
#: storage, a mask, a few long rows split into column chunks.
LATE_CALLS = {
    "softmax rows": lambda fe, p, t: fe.softmax(p["x"], num_threads=t),
    "logsumexp tiles": lambda fe, p, t: fe.logsumexp(p["short"], num_threads=t),
    "softmax_backward": lambda fe, p, t: fe.softmax_backward(p["g"], p["soft"], num_threads=t),
    "ce_grad labels": lambda fe, p, t: fe.cross_entropy_with_grad(
        p["short"], p["short_labels"], num_threads=t),
    "ce_grad probs": lambda fe, p, t: fe.cross_entropy_with_grad(
        p["x"], p["probs"], num_threads=t),
    "ce_grad axis 1": lambda fe, p, t: fe.cross_entropy_with_grad(
        p["x3"], p["x3_labels"], axis=1, num_threads=t),
    "softmax float16": lambda fe, p, t: fe.softmax(p["x16"], num_threads=t),
    "softmax where": lambda fe, p, t: fe.softmax(p["x"], where=p["where"], num_threads=t),
    "logsumexp split rows": lambda fe, p, t: fe.logsumexp(p["wide"], num_threads=t),
}


@needs_cython
def test_late_threads_change_no_bit():
    """The loops are scheduled "guided": a thread that starts late takes fewer units, so which
    thread computes a unit changes from call to call.  With a pure-Python thread holding one
    core busy, 4 OpenMP threads on the machine's cores start late in varied orders; every
    call must still give the bits of the one-thread call."""
    import threading

    fe, p = FRONTENDS["cython"], problem("tall", np.float32)
    rng = make_rng("late threads")
    short = problem("short", np.float32)
    inputs = dict(
        p, short=short["x"], short_labels=short["labels"],
        x3=rng.standard_normal((6, 21, 700)).astype(np.float32),
        x3_labels=rng.integers(0, 21, (6, 700)),
        x16=p["x"].astype(np.float16), where=rng.random(p["x"].shape[1]) < 0.9,
        wide=problem("wide", np.float32)["x"],
    )
    expected = {name: call(fe, inputs, 1) for name, call in LATE_CALLS.items()}
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    noise = threading.Thread(target=spin, daemon=True)
    noise.start()
    try:
        for repeat in range(4):
            for name, call in LATE_CALLS.items():
                assert_same_results(call(fe, inputs, 4), expected[name],
                                    f"{name}, 4 threads, repeat {repeat}")
    finally:
        stop.set()
        noise.join()


# ---------------------------------------------------------------------------------------------
# The thread setting


@pytest.fixture
def restore_threads():
    before = csoftmax.get_num_threads()
    yield before
    csoftmax.set_num_threads(None)  # back to the default, not a fixed count


def test_set_get_round_trip(restore_threads):
    for n in (1, 3, 2, 8, 1):
        csoftmax.set_num_threads(n)
        assert csoftmax.get_num_threads() == n


@pytest.mark.parametrize("n", [0, -1, -8])
def test_set_num_threads_below_one(restore_threads, n):
    with pytest.raises(ValueError):
        csoftmax.set_num_threads(n)
    assert csoftmax.get_num_threads() == restore_threads


def test_default_threads_is_used(restore_threads, frontend):
    p = problem("mid", np.float64)
    expected = KERNELS["ce_grad-int-mean"](frontend, p, 1)
    for n in (1, 3):
        csoftmax.set_num_threads(n)
        assert_same_results(KERNELS["ce_grad-int-mean"](frontend, p, None), expected, f"{n}")


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count()


def _child(code, **env_updates):
    """Run ``code`` in a fresh interpreter that imports this csoftmax; its stripped stdout."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(env_updates)
    root = os.path.dirname(os.path.dirname(os.path.abspath(csoftmax.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


PRINT_THREADS = "import csoftmax; print(csoftmax.get_num_threads())"


def test_default_threads_from_omp_num_threads():
    assert _child(PRINT_THREADS, OMP_NUM_THREADS="3") == "3"


def test_default_threads_is_usable_cores():
    assert _child(PRINT_THREADS) == str(_usable_cores())


@needs_cython
def test_threadpoolctl_limits_are_honoured():
    pytest.importorskip("threadpoolctl")
    code = (
        "import csoftmax, threadpoolctl\n"
        "before = csoftmax.get_num_threads()\n"
        "with threadpoolctl.threadpool_limits(limits=1):\n"
        "    inside = csoftmax.get_num_threads()\n"
        "print(before, inside, csoftmax.get_num_threads())\n"
    )
    before, inside, after = _child(code, OMP_NUM_THREADS="2").split()
    assert (before, inside, after) == ("2", "1", "2")
