"""No leaks (issue 6): many calls of every public function -- small, medium and large inputs,
every dtype path, ``out=``, threads, and calls that raise -- leave the process's memory flat.

Three measures, after a warm-up round (which fills NumPy's small-buffer cache, Cython's fused
dispatch tables and the OpenMP thread pool):

* reference counts of the argument objects are unchanged (catches a leaked reference even
  to a small object, whatever the allocator);
* ``tracemalloc``'s traced total grows by at most ``TRACED_BOUND`` (NumPy reports its data
  buffers to tracemalloc, so one leaked result of the 2 MiB input shows at once);
* the resident set size grows by at most ``RSS_BOUND`` (Linux, read from /proc).

By default each function makes ``CALLS`` = 300 calls (a few seconds for the whole file);
``CSOFTMAX_LEAK_CALLS=100000`` is the long version (docs/security.md), with
the same bounds: at 100,000 calls they are 2.6 bytes per call (tracemalloc) and 168 bytes per
call (RSS), so any per-call leak of a Python object or an array shows.  Each test prints
its figures (``-s`` shows them).
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from arrays import ALL_NAMES, make_rng

import csoftmax

CALLS = int(os.environ.get("CSOFTMAX_LEAK_CALLS", "300") or 300)
WARMUP = 60
TRACED_BOUND = 256 * 1024
RSS_BOUND = 16 * 1024 * 1024
#: RSS is meaningless under AddressSanitizer (tools/sanitize.sh): it keeps freed memory in
#: quarantine; the reference counts and tracemalloc still hold there
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
HAVE_STATM = os.path.exists("/proc/self/statm") and not UNDER_ASAN


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _problem():
    rng = make_rng("leaks")
    p = {
        "small": rng.standard_normal((4, 7)).astype(np.float32),
        "mid": rng.standard_normal((64, 1000)),  # 512 KiB
        "big": rng.standard_normal((512, 1024)).astype(np.float32),  # 2 MiB: runs threaded
        "tall": rng.standard_normal((3000, 5)),  # tiles of short rows
        "half": rng.standard_normal((8, 40)).astype(np.float16),
        "ints": rng.integers(-5, 5, size=(6, 9)),
        "fortran": np.asfortranarray(rng.standard_normal((33, 65))),
        "cplx": np.ones((3, 3), np.complex128),
        "c": 1000,
    }
    p["big_labels"] = rng.integers(0, 1024, size=512)
    p["big_labels"][::5] = -100
    p["mid_labels"] = rng.integers(0, 1000, size=64).astype(np.int32)
    p["bad_labels"] = p["mid_labels"].copy()
    p["bad_labels"][17] = 1000
    p["tall_labels"] = rng.integers(0, 5, size=3000).astype(np.uint8)
    p["tall_probs"] = rng.random((3000, 5))
    p["weight"] = rng.uniform(0.5, 2, size=1024).astype(np.float32)
    p["g_mid"] = rng.standard_normal((64, 1000))
    p["a_mid"] = csoftmax.softmax(p["mid"])
    p["o_mid"] = csoftmax.log_softmax(p["mid"])
    p["out_mid"] = np.empty((64, 1000))
    p["out_big"] = np.empty((512, 1024), np.float32)
    p["out_tall"] = np.empty((3000, 5))
    p["wrong_out"] = np.empty((64, 1000), np.float32)
    return p


def _calls(name, p):
    """Calls of ``name``: (callable, expected exception or None)."""
    f = getattr(csoftmax, name)
    if name in ("softmax", "log_softmax"):
        return [
            (lambda: f(p["small"]), None),
            (lambda: f(p["mid"], axis=0), None),
            (lambda: f(p["big"], out=p["out_big"]), None),
            (lambda: f(p["tall"], out=p["out_tall"], num_threads=2), None),
            (lambda: f(p["half"], axis=None), None),
            (lambda: f(p["ints"]), None),
            (lambda: f(p["fortran"], axis=(0, 1)), None),
            (lambda: f(p["small"].tolist()), None),
            (lambda: f(p["cplx"]), TypeError),
            (lambda: f(p["mid"], axis=2), ValueError),
            (lambda: f(p["mid"], out=p["wrong_out"]), ValueError),
            (lambda: f(p["mid"], num_threads=0), ValueError),
        ]
    if name == "logsumexp":
        return [
            (lambda: f(p["small"]), None),
            (lambda: f(p["mid"], axis=0), None),
            (lambda: f(p["big"], num_threads=3), None),
            (lambda: f(p["tall"], axis=None), None),
            (lambda: f(p["half"]), None),
            (lambda: f(p["ints"], axis=(0, 1)), None),
            (lambda: f(p["cplx"]), TypeError),
            (lambda: f(p["mid"], axis=-3), ValueError),
        ]
    if name in ("softmax_backward", "log_softmax_backward"):
        a = p["a_mid"] if name == "softmax_backward" else p["o_mid"]
        return [
            (lambda: f(p["g_mid"], a), None),
            (lambda: f(p["g_mid"], a, out=p["out_mid"], num_threads=2), None),
            (lambda: f(p["g_mid"], a, axis=0), None),
            (lambda: f(p["g_mid"].astype(np.float32), a), None),
            (lambda: f(p["small"], p["small"]), None),
            (lambda: f(p["g_mid"], p["small"]), ValueError),
            (lambda: f(p["cplx"], p["cplx"]), TypeError),
            (lambda: f(p["g_mid"], a, out=p["wrong_out"]), ValueError),
        ]
    kw_out = {"out": p["out_big"]} if name == "cross_entropy_with_grad" else {}
    return [
        (lambda: f(p["big"], p["big_labels"], weight=p["weight"], **kw_out), None),
        (lambda: f(p["mid"], p["mid_labels"], label_smoothing=0.1, reduction="sum"), None),
        (lambda: f(p["tall"], p["tall_labels"], reduction="none", num_threads=2), None),
        (lambda: f(p["tall"], p["tall_probs"], label_smoothing=0.2), None),
        (lambda: f(p["mid"][0], 3), None),
        (lambda: f(p["mid"], p["bad_labels"]), ValueError),
        (lambda: f(p["mid"], p["mid_labels"], reduction="avg"), ValueError),
        (lambda: f(p["mid"], p["mid_labels"], label_smoothing=2.0), ValueError),
        (lambda: f(p["cplx"], np.zeros(3, np.int64)), TypeError),
        (lambda: f(p["mid"], p["mid_labels"].astype(np.float64)), ValueError),
    ]


def _round(calls):
    for call, exc in calls:
        if exc is None:
            call()
        else:
            try:
                call()
            except exc:
                pass
            else:  # pragma: no cover - a wrong test, not a leak
                raise AssertionError("expected an exception")


def _refcounts(p):
    return {k: sys.getrefcount(v) for k, v in p.items()}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_no_leak(name):
    p = _problem()
    calls = _calls(name, p)
    rounds = max(1, CALLS // len(calls))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a warnings registry would grow, not the package
        for _ in range(WARMUP // len(calls) + 2):
            _round(calls)
        gc.collect()
        refs = _refcounts(p)
        tracemalloc.start()
        try:
            _round(calls)  # tracemalloc's own tables settle
            gc.collect()
            traced0 = tracemalloc.get_traced_memory()[0]
            rss0 = rss_bytes() if HAVE_STATM else 0
            t0 = time.perf_counter()
            for _ in range(rounds):
                _round(calls)
            elapsed = time.perf_counter() - t0
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] - traced0
            rss = (rss_bytes() - rss0) if HAVE_STATM else 0
        finally:
            tracemalloc.stop()
    n = rounds * len(calls)
    print(f"\n{name}: {n} calls in {elapsed:.1f} s; tracemalloc {traced:+d} B "
          f"({traced / n:+.3f} B/call), RSS {rss / 1024:+.0f} KiB ({rss / n:+.1f} B/call)")
    assert _refcounts(p) == refs, "a reference to an argument leaked"
    assert traced <= TRACED_BOUND, f"{name}: traced memory grew by {traced} B over {n} calls"
    if HAVE_STATM:
        assert rss <= RSS_BOUND, f"{name}: RSS grew by {rss} B over {n} calls"


def test_leak_check_sees_a_leak():
    """The measures above would see a leak of one result per call (a check of the check)."""
    x = np.ones((64, 1000))
    kept = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            kept.append(csoftmax.softmax(x))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown > TRACED_BOUND
    assert sys.getrefcount(kept[0]) >= 2
