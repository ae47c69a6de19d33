"""Interleaved timing of several calls, and robust statistics of the samples.

All the calls of one case are timed in one process, in rounds
``A B C, B C A, C A B, ...`` (the starting call rotates), until a time budget is
spent, so that drifts of the machine (frequency, other processes) hit every
implementation alike. A sample is a batch of ``number`` calls (as in
:mod:`timeit`), with ``number`` chosen so that a batch lasts at least
``min_sample`` seconds, well above the timer's resolution.

Each sample records wall time and the CPU time of the calling thread
(:func:`time.thread_time`, exact on Linux, unlike the process CPU time whose
other-thread part advances in scheduler ticks). On a shared machine another
process that takes the core stalls the timed call: wall time grows but CPU time
does not, so the CPU/wall ratio of the sample falls. Samples whose ratio is
below ``cpu_keep`` times the best ratio seen for that call are dropped as
contended before the median is taken (the minimum is kept as well). For
multi-threaded calls this catches stalls of the calling thread; stalls of a
worker thread show only where the caller spins at the barrier.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from dataclasses import dataclass, field

import numpy as np

#: Fraction of the best CPU/wall ratio below which a sample counts as contended.
CPU_KEEP = 0.9


@dataclass
class Samples:
    """The samples of one call.

    Attributes
    ----------
    number : int
        Calls per sample.
    wall, cpu : list of float
        Wall-clock and calling-thread CPU seconds per call, one entry per sample.
    """

    number: int
    wall: list = field(default_factory=list)
    cpu: list = field(default_factory=list)

    def summary(self, cpu_keep=CPU_KEEP):
        """Summarize the samples.

        Parameters
        ----------
        cpu_keep : float, optional
            Samples whose CPU/wall ratio is below ``cpu_keep`` times the best
            ratio are dropped from the median and quartiles.

        Returns
        -------
        dict
            ``median``, ``q1``, ``q3`` (of the kept samples), ``min``, ``max``
            (of all samples), in seconds per call; ``n`` samples, ``n_kept``,
            ``number`` calls per sample, ``cpu_per_wall`` (median ratio of the
            kept samples).
        """
        wall = np.asarray(self.wall)
        ratio = np.asarray(self.cpu) / np.maximum(wall, 1e-12)
        kept = ratio >= cpu_keep * ratio.max()
        q1, median, q3 = np.percentile(wall[kept], [25, 50, 75])
        return {"median": float(median), "q1": float(q1), "q3": float(q3),
                "min": float(wall.min()), "max": float(wall.max()),
                "n": int(wall.size), "n_kept": int(kept.sum()), "number": self.number,
                "cpu_per_wall": float(np.median(ratio[kept]))}


def time_batch(call, number, context=None):
    """Time ``number`` consecutive calls.

    Parameters
    ----------
    call : callable
        Takes no argument.
    number : int
    context : callable, optional
        Returns a context manager entered around the whole batch, outside the
        timed region (e.g. ``torch.no_grad``, as a user wraps an inference
        loop), so that its cost is not charged to every call.

    Returns
    -------
    wall, cpu : float
        Wall-clock and calling-thread CPU seconds for the whole batch.
    """
    loop = itertools.repeat(None, number)
    with context() if context is not None else contextlib.nullcontext():
        cpu0 = time.thread_time()
        wall0 = time.perf_counter()
        for _ in loop:
            call()
        wall1 = time.perf_counter()
        cpu1 = time.thread_time()
    return wall1 - wall0, cpu1 - cpu0


def autorange(call, min_sample, max_number=1_000_000, context=None):
    """Find how many calls make a batch last at least ``min_sample`` seconds.

    Parameters
    ----------
    call : callable
    min_sample : float
        Seconds.
    max_number : int, optional
    context : callable, optional
        As in :func:`time_batch`.

    Returns
    -------
    number : int
        Calls per batch.
    wall, cpu : float
        Seconds per call of the last batch (of ``number`` calls), usable as a
        first sample.
    """
    number = 1
    while True:
        wall, cpu = time_batch(call, number, context)
        if wall >= min_sample or number >= max_number:
            return number, wall / number, cpu / number
        # aim 20% past the goal, growing at most 100-fold per step
        want = int(number * 1.2 * min_sample / max(wall, 1e-9)) + 1
        number = min(max_number, max(2 * number, min(want, 100 * number)))


def interleave(calls, budget, min_rounds=5, max_rounds=10_000, min_sample=1e-3,
               warmup=1, contexts=None):
    """Time several calls interleaved, until a time budget is spent.

    The calibration pass (:func:`autorange`, one call after another) gives each
    call its first sample; then rounds of interleaved samples follow.

    Parameters
    ----------
    calls : dict of str to callable
        The calls of one case.
    budget : float
        Seconds of timing (calibration included); at least ``min_rounds``
        samples of each call are taken whatever the budget.
    min_rounds, max_rounds : int, optional
        Fewest and most samples of each call.
    min_sample : float, optional
        Minimal duration of one sample (a batch of calls), in seconds.
    warmup : int, optional
        Untimed calls of each before calibration.
    contexts : dict of str to callable, optional
        Per call, a context-manager factory entered around each of its batches
        (see :func:`time_batch`).

    Returns
    -------
    dict of str to Samples
    """
    names = list(calls)
    contexts = contexts or {}
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in names:
            if warmup:
                time_batch(calls[name], warmup, contexts.get(name))
        start = time.perf_counter()
        samples = {}
        for name in names:
            number, wall, cpu = autorange(calls[name], min_sample,
                                          context=contexts.get(name))
            samples[name] = Samples(number, [wall], [cpu])
        for rnd in range(1, max_rounds):
            if rnd >= min_rounds and time.perf_counter() - start >= budget:
                break
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                s = samples[name]
                wall, cpu = time_batch(calls[name], s.number, contexts.get(name))
                s.wall.append(wall / s.number)
                s.cpu.append(cpu / s.number)
    finally:
        if gc_enabled:
            gc.enable()
    return samples
