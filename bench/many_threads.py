"""Many Python threads calling at once: ``python -m bench --many-threads``.

A server answering requests, or a data loader, calls the loss from several
Python threads at once, each on its own small batch with ``num_threads=1``.
The kernels release the GIL, so the aggregate throughput should grow with the
cores on large enough calls, and not collapse on tiny ones (where the calls
mostly hold the GIL and the threads take turns).

The measurement: ``n`` Python threads each call the function on their own
seeded inputs in a loop for a fixed time; their aggregate calls per second is
divided by the calls per second of one thread doing the same alone. One-thread
and ``n``-thread runs alternate, a few rounds each, so that a drift of the
machine hits both; the ratio is that of the best rates (``stat="min"``, the
least disturbed by other processes) or of the median rates.

A pure-Python call of about the same length (``python sum(range(100))``, nothing
of csoftmax) is measured the same way beside them: the ratio that the
interpreter itself reaches on the machine when its threads take turns at the
GIL, the bound for a small call that holds the GIL for most of its time.
"""

from __future__ import annotations

import contextlib
import importlib
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np

from .ops import OPS, make_inputs, reference, shape_label
from .peers import to_arrays
from .runner import TOLERANCE, rel_error

#: Python threads of the measurement.
THREADS = 8
#: Default shapes: a call dominated by its overhead, and one by its work.
SHAPES = [(1, 1000), (256, 1000)]
#: Rounds of (one thread, ``n`` threads) per measurement.
ROUNDS = 3


@dataclass(frozen=True)
class Impl:
    """One function measured from many threads.

    Attributes
    ----------
    name : str
        Key in the results, e.g. ``csoftmax.cross_entropy``.
    op : str
        Operation (see :data:`bench.ops.OPS`) whose inputs and reference it uses.
    module : str
        Module that must import.
    """

    name: str
    op: str
    module: str
    #: A pure-Python call of about a small call's length in place of the function (its
    #: inputs unused, nothing checked): the interpreter's own many-threads ratio on this
    #: machine, the bound that a call holding the GIL for most of its time can reach.
    control: bool = False

    def prepare(self, inputs):
        """Return ``(call, context)``: the call on ``inputs`` with one thread,
        and a context-manager factory entered once around a thread's loop."""
        if self.control:
            return (lambda: sum(range(CONTROL_TERMS))), contextlib.nullcontext
        mod = importlib.import_module(self.module)
        args = (inputs["x"], inputs["target"]) if "target" in inputs else (inputs["x"],)
        if self.module == "torch":
            func = mod.nn.functional.cross_entropy
            tensors = tuple(mod.from_numpy(a) for a in args)
            return (lambda: func(*tensors)), mod.no_grad
        func = getattr(mod, OPS[self.op].func)
        return (lambda: func(*args, num_threads=1)), contextlib.nullcontext


#: Terms of the pure-Python control's sum: about a microsecond, a 1x1000 loss's length.
CONTROL_TERMS = 100

#: The judged function first; the others give context.
IMPLS = [Impl("csoftmax.cross_entropy", "cross_entropy", "csoftmax"),
         Impl("torch.cross_entropy", "cross_entropy", "torch"),
         Impl("csoftmax.softmax", "softmax", "csoftmax"),
         Impl(f"python sum(range({CONTROL_TERMS}))", "cross_entropy", "builtins",
              control=True)]


def calls_per_second(calls, duration):
    """Run each call in its own Python thread for ``duration`` seconds.

    Parameters
    ----------
    calls : list of (callable, callable)
        Per thread, its call and the context-manager factory entered around
        its loop (after one untimed warm-up call).
    duration : float
        Seconds.

    Returns
    -------
    float
        Calls completed by all the threads, per second of the run.
    """
    barrier = threading.Barrier(len(calls) + 1)
    running = [True]
    counts, ends = [0] * len(calls), [0.0] * len(calls)

    def worker(i):
        call, context = calls[i]
        try:
            with context():
                call()
                barrier.wait()
                n = 0
                while running[0]:
                    call()
                    n += 1
                ends[i] = time.perf_counter()
            counts[i] = n
        except BaseException:
            barrier.abort()  # the main thread's wait raises instead of hanging
            raise

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(len(calls))]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
        start = time.perf_counter()
        time.sleep(duration)
    finally:
        running[0] = False
        for thread in threads:
            thread.join()
    if min(ends) == 0.0:
        raise RuntimeError("a thread's call failed")
    return sum(counts) / (max(ends) - start)


def _check(impl, inputs, call, context):
    """Relative error of one call's full-size output against the float64 reference."""
    with context():
        out = to_arrays(call())
    want = reference(OPS[impl.op], inputs)
    return rel_error(out[-1:], want[-1:])


def measure(impl, shape, dtype, n_threads=THREADS, duration=0.5, rounds=ROUNDS,
            stat="min", seed=0):
    """Measure the many-threads throughput ratio of one function.

    Parameters
    ----------
    impl : Impl
    shape : tuple of int
    dtype : str
    n_threads : int, optional
        Python threads of the many-threads run.
    duration : float, optional
        Seconds of each run (one thread, or ``n_threads``).
    rounds : int, optional
        Alternating (one thread, ``n_threads``) pairs.
    stat : {"min", "median"}, optional
        ``min``: ratio of the best rates; ``median``: of the median rates.
    seed : int, optional
        Thread ``i`` gets the inputs of seed ``seed + i``.

    Returns
    -------
    dict
        JSON-ready: ``impl``, ``op``, ``shape``, ``dtype``, ``n_threads``,
        ``single`` and ``multi`` (calls per second), ``ratio`` (multi /
        single), the per-round rates, ``status`` (``ok``, ``mismatch`` or
        ``error``) and ``message``.
    """
    result = {"impl": impl.name, "op": impl.op, "shape": list(shape), "dtype": dtype,
              "n_threads": n_threads, "single": None, "multi": None, "ratio": None,
              "status": "ok", "message": ""}
    try:
        inputs = [make_inputs(OPS[impl.op], shape, np.dtype(dtype), seed + i)
                  for i in range(n_threads)]
        calls = [impl.prepare(inp) for inp in inputs]
        err = 0.0 if impl.control else _check(impl, inputs[0], *calls[0])
    except Exception as exc:  # noqa: BLE001 - reported in the row
        return {**result, "status": "error", "message": f"{type(exc).__name__}: {exc}"}
    if not err <= TOLERANCE[dtype]:
        result.update(status="mismatch", message=f"error {err:.2e} vs float64 reference")
    single, multi = [], []
    try:
        for _ in range(rounds):
            single.append(calls_per_second(calls[:1], duration))
            multi.append(calls_per_second(calls, duration))
    except Exception as exc:  # noqa: BLE001 - reported in the row
        return {**result, "status": "error", "message": f"{type(exc).__name__}: {exc}"}
    pick = max if stat == "min" else statistics.median
    result.update(single=pick(single), multi=pick(multi), single_rounds=single,
                  multi_rounds=multi)
    result["ratio"] = result["multi"] / result["single"]
    return result


def run(shapes, dtypes, n_threads=THREADS, budget=1.0, stat="min", seed=0,
        stream=None):
    """Measure every available function on every shape and dtype.

    Parameters
    ----------
    shapes : list of tuple of int
    dtypes : list of str
    n_threads : int, optional
    budget : float, optional
        Seconds per (function, shape, dtype), split over the rounds.
    stat : {"min", "median"}, optional
    seed : int, optional
    stream : file, optional
        Where progress is written.

    Returns
    -------
    results : list of dict
        See :func:`measure`.
    skipped : dict of str to str
        Functions whose module does not import, and why.
    """
    duration = max(budget / (2 * ROUNDS), 0.01)
    results, skipped = [], {}
    torch = _import("torch")
    saved = torch.get_num_threads() if torch else None
    try:
        if torch:
            torch.set_num_threads(1)
        for impl in IMPLS:
            why = _unavailable(impl.module)
            if why:
                skipped[impl.name] = why
                continue
            for shape in shapes:
                for dtype in dtypes:
                    if stream is not None:
                        print(f"many threads: {impl.name} {shape_label(shape)} {dtype} "
                              f"x{n_threads}", file=stream, flush=True)
                    results.append(measure(impl, shape, dtype, n_threads, duration,
                                           stat=stat, seed=seed))
    finally:
        if torch:
            torch.set_num_threads(saved)
    return results, skipped


def _import(name):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - optional
        return None


def _unavailable(module):
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        return f"{module} not importable ({type(exc).__name__}: {exc})"
    return None


def table_lines(results, skipped=None, n_threads=THREADS):
    """Return the Markdown lines of the many-threads table."""
    lines = [f"## many threads: {n_threads} Python threads, each calling on its own "
             "batch with num_threads=1 (torch: set_num_threads(1), no_grad)", "",
             f"| function | shape | dtype | 1 thread | {n_threads} threads | "
             f"{n_threads} threads / 1 |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in results:
        if r["status"] == "error":
            cells = ["**ERROR**", "—", r["message"]]
        else:
            cells = [f"{r['single']:,.0f} calls/s", f"{r['multi']:,.0f} calls/s",
                     f"{r['ratio']:.2f}x"]
            if r["status"] == "mismatch":
                cells[2] += f" **MISMATCH** ({r['message']})"
        lines.append(f"| {r['impl']} | {shape_label(r['shape'])} | {r['dtype']} | "
                     + " | ".join(cells) + " |")
    lines += [f"- skipped: {name} ({why})" for name, why in (skipped or {}).items()]
    return lines
