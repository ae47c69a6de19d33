"""Run benchmark cases: prepare every peer, verify its result, time them all.

A case is one ``(operation, shape, dtype, threads)``. Its inputs are made once
(seeded) and shared by every peer and thread count. Before any timing each
peer's result is compared with csoftmax's, and the package's own results
(csoftmax, its ``out=`` variant and its NumPy twin) with an independent float64
reference: a peer that disagrees is still timed but marked as a mismatch, so
that a wrong fast answer cannot pass unnoticed.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from dataclasses import dataclass

import numpy as np

from .ops import make_inputs, reference, shape_label
from .timing import interleave

#: Largest accepted error, relative to the largest magnitude of the reference.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes
    ----------
    op : bench.ops.Op
    shape : tuple of int
    dtype : str
        ``"float32"`` or ``"float64"``.
    threads : int
    """

    op: object
    shape: tuple
    dtype: str
    threads: int

    @property
    def label(self):
        """Short description, e.g. ``softmax 8192x1000 float32 t=2``."""
        return f"{self.op.name} {shape_label(self.shape)} {self.dtype} t={self.threads}"


@dataclass
class Settings:
    """How each case is timed.

    Attributes
    ----------
    budget : float
        Seconds of interleaved timing per case.
    min_rounds : int
        Rounds timed whatever the budget.
    min_sample : float
        Minimal duration of one sample (a batch of calls), in seconds.
    seed : int
        Seed of the inputs.
    stat : {"median", "min"}
        Statistic reported as each call's ``time`` (and used for ratios and
        targets); both are recorded whatever the choice.
    """

    budget: float = 0.5
    min_rounds: int = 5
    min_sample: float = 1e-3
    seed: int = 0
    stat: str = "median"


def rel_error(result, expected):
    """Largest difference between two sets of outputs, relative to their scale.

    Parameters
    ----------
    result, expected : tuple of numpy.ndarray

    Returns
    -------
    float
        ``max |result - expected| / max |expected|`` over every output
        (NaN at the same places counts as equal); ``inf`` when the number of
        outputs, a shape, or the NaN positions differ.
    """
    if len(result) != len(expected):
        return float("inf")
    worst = 0.0
    for got, want in zip(result, expected):
        if np.shape(got) != np.shape(want):
            return float("inf")
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if not np.array_equal(np.isnan(got), np.isnan(want)):
            return float("inf")
        finite = ~np.isnan(want)
        if not finite.any():
            continue
        diff = np.abs(got[finite] - want[finite]).max()
        scale = max(np.abs(want[finite]).max(), np.finfo(np.float64).tiny)
        worst = max(worst, float(diff / scale) if np.isfinite(diff) else float("inf"))
    return worst


def primary_error(result, expected):
    """Relative error of the last (full-size) output alone, as in :func:`rel_error`."""
    return rel_error(result[-1:], expected[-1:])


def verify(case, prepared, inputs):
    """Run each prepared call once and compare its outputs.

    Parameters
    ----------
    case : Case
    prepared : dict of str to bench.peers.Prepared
        Must hold ``"csoftmax"``.
    inputs : dict

    Returns
    -------
    dict of str to dict
        Per peer: ``status`` (``"ok"``, ``"mismatch"``, ``"error"`` when the
        call raised, ``"unchecked"`` when there is nothing to compare),
        ``err_ref`` (error against the float64 reference), ``err_primary``
        (same, for the full-size output only), ``err_csoftmax``,
        ``first_call`` (seconds of this first, untimed call) and, unless
        ``ok``, ``message``.
    """
    expected = reference(case.op, inputs)
    tol = TOLERANCE[case.dtype]
    baseline, checks = None, {}  # csoftmax's outputs (prepared first)
    for name, prep in prepared.items():
        check = checks[name] = {"status": "unchecked"}
        try:
            with prep.context() if prep.context else contextlib.nullcontext():
                start = time.perf_counter()
                result = prep.call()
                check["first_call"] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - reported per peer
            check.update(status="error", message=f"{type(exc).__name__}: {exc}")
            continue
        if not prep.verify:
            continue
        out = prep.normalize(result)
        del result
        check["err_ref"] = rel_error(out, expected)
        check["err_primary"] = primary_error(out, expected)
        problems = []
        if prep.own:
            bad = [str(a.dtype) for a in out if a.dtype != np.dtype(case.dtype)]
            if bad:
                problems.append(f"output dtype {', '.join(bad)}, not {case.dtype}")
            if not check["err_ref"] <= tol:
                problems.append(f"error {check['err_ref']:.2e} vs float64 reference")
        if name == "csoftmax":
            baseline = out
        elif baseline is not None:
            check["err_csoftmax"] = err = rel_error(out, baseline)
            if not prep.own and not err <= tol:
                problems.append(f"differs from csoftmax by {err:.2e} "
                                f"(vs reference: {check['err_ref']:.2e})")
        elif not prep.own and not check["err_ref"] <= tol:
            problems.append(f"error {check['err_ref']:.2e} vs float64 reference")
        check["status"] = "mismatch" if problems else "ok"
        if problems:
            check["message"] = "; ".join(problems)
    return checks


def run_case(case, peers, inputs, settings):
    """Verify and time every peer on one case.

    Parameters
    ----------
    case : Case
    peers : list of bench.peers.Peer
        Available peers; the first is csoftmax.
    inputs : dict
    settings : Settings

    Returns
    -------
    dict
        JSON-ready: the case, and per peer its checks and timing summary
        (seconds per call; ``time`` is the statistic of ``settings.stat``).
    """
    start = time.perf_counter()
    prepared, notes = {}, []
    for peer in peers:
        try:
            prep = peer.prepare(case.op, inputs, case.threads)
        except Exception as exc:  # noqa: BLE001 - a peer failing to set up is skipped
            notes.append(f"{peer.name}: setup failed ({type(exc).__name__}: {exc})")
            continue
        if prep is not None:
            prepared[peer.name] = prep
    checks = verify(case, prepared, inputs)
    gc.collect()
    timed = {name: prep.call for name, prep in prepared.items()
             if checks[name]["status"] != "error"}
    # the verification call above was the warm-up
    contexts = {name: prepared[name].context for name in timed}
    samples = interleave(timed, settings.budget, min_rounds=settings.min_rounds,
                         min_sample=settings.min_sample, warmup=0, contexts=contexts)
    threads = {p.name: case.threads if p.threaded else 1 for p in peers}
    results = {}
    for name, check in checks.items():
        entry = {"threads": threads[name], **check}
        if name in samples:
            entry.update(samples[name].summary())
            entry["time"] = entry[settings.stat]
        results[name] = entry
    return {"op": case.op.name, "shape": list(case.shape), "dtype": case.dtype,
            "threads": case.threads, "results": results, "notes": notes,
            "seconds": round(time.perf_counter() - start, 2)}


def run_plan(cases, peers, settings, on_result=None, stream=sys.stderr):
    """Run cases in order, reusing inputs across thread counts.

    Parameters
    ----------
    cases : list of Case
        Ordered so that cases sharing ``(op, shape, dtype)`` are adjacent.
    peers : list of bench.peers.Peer
    settings : Settings
    on_result : callable, optional
        Called with each case's result as soon as it is ready.
    stream : file, optional
        Where progress is written.

    Returns
    -------
    list of dict
    """
    results, key, inputs = [], None, None
    start = time.perf_counter()
    tty = hasattr(stream, "isatty") and stream.isatty()
    for i, case in enumerate(cases, 1):
        elapsed = time.perf_counter() - start
        end, newline = ("\r", "\n") if tty else ("\n", "")
        print(f"[{i}/{len(cases)} {elapsed:5.0f}s] {case.label:<60}", end=end,
              file=stream, flush=True)
        if (case.op, case.shape, case.dtype) != key:
            inputs = None
            gc.collect()
            key = (case.op, case.shape, case.dtype)
            inputs = make_inputs(case.op, case.shape, np.dtype(case.dtype), settings.seed)
        result = run_case(case, peers, inputs, settings)
        for name, entry in result["results"].items():
            if entry["status"] in {"mismatch", "error"}:
                print(f"{newline}!! {case.label}: {name} {entry['status'].upper()}: "
                      f"{entry['message']}", file=stream, flush=True)
        results.append(result)
        if on_result is not None:
            on_result(result)
    if tty:
        print(file=stream)
    print(f"done: {len(cases)} cases in {time.perf_counter() - start:.0f}s",
          file=stream, flush=True)
    return results
