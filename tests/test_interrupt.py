"""KeyboardInterrupt during a long kernel call (issue 6).

The kernels run without the GIL and never poll for signals: a SIGINT (Ctrl-C), an alarm whose
handler raises, or ``_thread.interrupt_main()`` arriving while a kernel runs only sets
CPython's "pending signal" flag.  The kernel finishes its whole array (all its OpenMP threads
too), the call's remaining Python code runs up to the interpreter's next check of that flag,
and the ``KeyboardInterrupt`` is raised there -- so a call that is interrupted either returns
normally or raises ``KeyboardInterrupt`` with its output completely written (never half).
Nothing is left locked or corrupted: the package keeps working, with the same results, in the
same process.  A process interrupted in a loop of calls stops at the end of the current call.
"""

from __future__ import annotations

import _thread
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from arrays import make_rng

import csoftmax

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

#: 2048 x 8192 float64 (128 MiB): a call takes 10-300 ms; the interrupt comes a fifth of the
#: way through it
SHAPE = (2048, 8192)
DELAY = 0.02  # for the tests that do not time a kernel first
#: how long to wait for an interrupt that was sent (a lost one fails the test, never hangs it)
PATIENCE = 10.0


@pytest.fixture(autouse=True)
def default_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) during each test, whatever ran before."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _wait_for_interrupt():
    """Sleep until the pending KeyboardInterrupt is raised; fail after PATIENCE seconds."""
    end = time.perf_counter() + PATIENCE
    while time.perf_counter() < end:
        time.sleep(0.002)
    raise AssertionError("the KeyboardInterrupt was lost")


@pytest.fixture(scope="module")
def problem():
    rng = make_rng("interrupt")
    x = rng.standard_normal(SHAPE)
    labels = rng.integers(0, SHAPE[1], size=SHAPE[0])
    return x, labels


def _alarm(delay):
    def handler(signum, frame):
        raise KeyboardInterrupt("alarm")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, delay)
    return lambda: (signal.setitimer(signal.ITIMER_REAL, 0), signal.signal(signal.SIGALRM, old))


def _timer(delay, fire):
    t = threading.Timer(delay, fire)
    t.start()
    return t.cancel


def _sigint(delay):
    return _timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT))


def _interrupt_main(delay):
    return _timer(delay, _thread.interrupt_main)


MECHANISMS = {"interrupt_main": _interrupt_main, "SIGINT": _sigint, "SIGALRM": _alarm}

#: a call that writes its whole result into ``out`` in the kernel (the direct path)
CALLS = {
    "softmax": lambda x, labels, out, t: csoftmax.softmax(x, out=out, num_threads=t),
    "log_softmax-in-place": lambda x, labels, out, t: csoftmax.log_softmax(
        out, out=out, num_threads=t),
    "cross_entropy_with_grad": lambda x, labels, out, t: csoftmax.cross_entropy_with_grad(
        x, labels, out=out, label_smoothing=0.1, num_threads=t)[1],
}


def _interrupted_call(call, mechanism, delay):
    """Run ``call()`` with an interrupt scheduled after ``delay`` s: (raised, seconds until
    the call returned or raised)."""
    gc.collect()
    gc.disable()  # a collection before the kernel starts could outlast the delay
    cancel = MECHANISMS[mechanism](delay)
    t0 = time.perf_counter()
    raised = False
    try:
        try:
            call()
            # the interrupt, if it came during the call and was not raised inside it, is raised
            # at the latest here, at the interpreter's next check
            _wait_for_interrupt()
        except KeyboardInterrupt:
            raised = True
        return raised, time.perf_counter() - t0
    finally:
        cancel()
        gc.enable()


@pytest.mark.parametrize(("name", "mechanism", "num_threads"), [
    ("softmax", "SIGINT", 2),
    ("softmax", "interrupt_main", 1),
    ("log_softmax-in-place", "SIGALRM", 2),
    ("log_softmax-in-place", "SIGINT", 1),
    ("cross_entropy_with_grad", "interrupt_main", 2),
    ("cross_entropy_with_grad", "SIGALRM", 1),
])
def test_interrupt_during_a_kernel(problem, name, mechanism, num_threads):
    if csoftmax.BACKEND != "cython":
        pytest.skip("about the compiled kernels, which run without the GIL; the NumPy twin "
                    "can be interrupted between its NumPy calls")
    x, labels = problem
    call = CALLS[name]
    want = np.array(x, copy=True)
    t0 = time.perf_counter()
    want = call(x, labels, want, num_threads)  # the uninterrupted result, and the call's time
    duration = time.perf_counter() - t0
    assert duration > 0.002, "the kernel is too fast for this test to interrupt it"

    out = np.array(x, copy=True)
    raised, elapsed = _interrupted_call(lambda: call(x, labels, out, num_threads), mechanism,
                                        duration / 5)
    assert raised, "the KeyboardInterrupt was lost"
    # the kernel was not cut short: the whole output is there, bit for bit -- or, if the
    # interrupt came before the kernel started (the machine stalled the call), none of it
    # (compared to a bool first: pytest's diff of two huge byte strings would take hours)
    complete = out.tobytes() == want.tobytes()
    untouched = out.tobytes() == x.tobytes()
    assert complete or untouched, "an interrupted call left a partial result"
    assert elapsed < duration * 5 + 5, "the interrupt took far longer than the call"

    # and the package still works, with the same results, in every function
    again = np.array(x, copy=True)
    same = call(x, labels, again, num_threads).tobytes() == want.tobytes()
    assert same
    small = x[:64, :100]
    assert np.allclose(csoftmax.softmax(small).sum(axis=1), 1.0)
    assert np.isfinite(csoftmax.logsumexp(small)).all()
    csoftmax.cross_entropy(small, labels[:64] % 100)


def test_interrupt_while_another_thread_is_in_a_kernel(problem):
    """The main thread is interrupted while a worker thread runs kernels: the worker's calls
    complete correctly and it can be joined."""
    x, labels = problem
    want = csoftmax.softmax(x, num_threads=2)
    results = []

    def worker():
        for _ in range(3):
            results.append(csoftmax.softmax(x, num_threads=2).tobytes() == want.tobytes())

    t = threading.Thread(target=worker)
    cancel = lambda: None  # noqa: E731
    try:
        with pytest.raises(KeyboardInterrupt):
            t.start()
            cancel = _interrupt_main(DELAY)
            _wait_for_interrupt()
    finally:
        cancel()
        t.join(timeout=120)
    assert not t.is_alive()
    assert results == [True, True, True]


CTRL_C = """
    import sys, time
    import numpy as np, csoftmax
    x = np.random.default_rng(0).standard_normal((2048, 8192))
    out = np.empty_like(x)
    csoftmax.softmax(x, out=out)
    print("ready", flush=True)
    calls = 0
    try:
        while True:
            csoftmax.cross_entropy_with_grad(x, np.zeros(2048, np.int64), out=out)
            csoftmax.softmax(x, out=out, num_threads=2)
            calls += 1
    except KeyboardInterrupt:
        t = time.perf_counter()
        print("interrupted after", calls, "loops", flush=True)
    r = csoftmax.softmax(x[:4])
    assert np.allclose(r.sum(axis=1), 1.0)
    print("still works", flush=True)
"""


def test_ctrl_c_stops_a_loop_of_calls():
    """A real SIGINT to a process busy in a loop of kernel calls: it stops within about one
    call, raises KeyboardInterrupt (no crash, no hang) and csoftmax keeps working."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CTRL_C)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        waited = time.perf_counter() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "interrupted after" in out and "still works" in out, (out, err)
    assert waited < 30
