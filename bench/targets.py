"""The performance targets of csoftmax, the cases they need, and their verdicts.

Every target is a :class:`Target`: a row of the table printed by
``python -m bench --targets``, measured once per dtype. Speed targets are
judged at all usable cores (PyTorch and scikit-learn at the same thread count),
thread scaling at 1 against 2 threads, accuracy on every float32 case; the
``parity`` rows (float32) come from :mod:`bench.parity`. A target whose
csoftmax result disagrees with the float64 reference fails whatever the timing.
The speed targets are float32's (:data:`TARGET_DTYPE`): a float64 column
shows the same ratios without a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import half, parity
from .many_threads import IMPLS, THREADS
from .ops import OPS, SHAPE_GROUPS
from .report import copy_ratio, larger_floor
from .runner import Case

CE = "cross_entropy_with_grad"
LARGE = [(8192, 1000), (1024, 32000), (4096, 4096)]
TALL = [(65536, 10), (262144, 2)]
WIDE = [(16, 131072), (4, 262144)]
SMALL = SHAPE_GROUPS["small-call"]
#: Float32 error within this (relative to the output's scale) counts as a tie.
ERROR_FLOOR = 2.0 ** -24
#: The dtype of the speed targets (the issues set them in float32; the 16-bit ones are the
#: parity rows of :mod:`bench.half`): other dtypes' ratios are shown, not judged.
TARGET_DTYPE = "float32"


@dataclass(frozen=True)
class Target:
    """One row of the targets table.

    Attributes
    ----------
    group : str
        What is measured (first column).
    op : str
        Operation name (see :data:`bench.ops.OPS`).
    shape : tuple of int or None
        None for targets over every case (accuracy).
    kind : {"faster", "floor", "relative", "scaling", "threads", "accuracy", "parity"}
        ``faster``: ``peer time / csoftmax time >= bound``; ``floor``:
        ``csoftmax time / np.copyto time <= bound``; ``relative``:
        ``csoftmax time / csoftmax time of op other <= bound`` (the two timed
        interleaved in one case, see :data:`RELATIVE`); ``scaling``:
        ``1-thread time / 2-thread time >= bound``; ``threads``: aggregate
        calls per second of :data:`bench.many_threads.THREADS` Python threads
        calling ``op`` with ``num_threads=1`` over one thread's, ``>= bound``
        (see :mod:`bench.many_threads`); ``accuracy``: float32 error of the
        full-size output against the float64 reference no larger than
        PyTorch's; ``parity``: a criterion of :data:`bench.parity.SPECS`,
        measured by :mod:`bench.parity` (float32).
    bound : float
    peer : str, optional
        Peer of ``faster``; other operation of ``relative``; ``"<case
        key>:<criterion name>"`` of ``parity``.
    """

    group: str
    op: str
    shape: tuple | None
    kind: str
    bound: float = 1.0
    peer: str | None = None

    @property
    def criterion(self):
        """The criterion in words."""
        if self.kind == "parity":
            return parity.criterion_text(self.peer, parity.SPECS + half.ALL_SPECS)
        if self.kind == "relative":
            own, base, how = RELATIVE.get((self.op, self.peer), (None, None, ""))
            return f"<= {self.bound:g}x csoftmax {self.peer} time ({how or 'own case'})"
        return {
            "faster": f"no slower than {self.peer}" if self.bound == 1
            else f">= {self.bound:g}x faster than {self.peer}",
            "floor": f"<= {self.bound:g}x np.copyto time",
            "scaling": f"2 threads >= {self.bound:g}x faster than 1",
            "threads": f"{THREADS} Python threads, num_threads=1: calls/s >= "
                       f"{self.bound:g}x one thread's",
            "accuracy": "float32 error <= PyTorch's",
        }[self.kind]


#: ``(op, other op)`` of a relative target -> ``(peer timing op, peer timing the
#: other op, how)``: both peers run in the case of ``op``, timed interleaved.
RELATIVE = {
    ("cross_entropy_with_grad_weighted", CE): ("csoftmax_out", "csoftmax_plain",
                                               "out=, interleaved"),
    (CE, "cross_entropy"): ("csoftmax", "csoftmax_loss", "interleaved, same inputs"),
}


def _training_rows():
    fused = "fused CE loss+grad, int targets, mean"
    rows = []
    for shape in LARGE:
        rows += [Target(fused, CE, shape, "floor", 1.3),
                 Target(fused, CE, shape, "faster", 3, "torch")]
    for shape in TALL:
        rows += [Target(fused, CE, shape, "faster", 10, "torch"),
                 Target(fused, CE, shape, "faster", 2, "sklearn")]
    # the AVX2 kernels' bound: judged on every path, meant for --cpu avx2
    rows += [Target(f"{fused} (AVX2 path target)", CE, shape, "faster", 8, "torch")
             for shape in TALL]
    rows += [Target(fused, CE, shape, "faster", 2, "torch") for shape in WIDE]
    rows.append(Target("prob targets loss+grad", "cross_entropy_with_grad_prob",
                       (8192, 1000), "faster", 5, "torch"))
    rows.append(Target("weight+ignore_index+label_smoothing",
                       "cross_entropy_with_grad_weighted", (8192, 1000), "relative",
                       1.2, CE))
    for op in ("softmax", "log_softmax"):
        for shape in LARGE + TALL + WIDE:
            rows.append(Target(op, op, shape, "faster", 1.3, "torch"))
            if shape in LARGE:
                rows.append(Target(op, op, shape, "floor", 1.3))
    return rows


def _inference_rows():
    loss = "loss only (no grad), int targets, mean"
    small = "small call (inference)"
    rows = []
    # the small-call set: >= 2x torch where the issue sets it, else no slower
    for op in ("cross_entropy", "log_softmax", "logsumexp"):
        for shape in SMALL:
            fast = (op == "cross_entropy" and shape in SMALL[:3]) or shape == (1, 1000)
            rows.append(Target(small, op, shape, "faster", 2 if fast else 1, "torch"))
    for shape in SMALL[:2]:
        rows += [Target("loss+grad vs loss only", CE, shape, "relative", 1.5,
                        "cross_entropy"),
                 Target("loss+grad vs loss only", CE, shape, "faster", 5, "torch")]
    for shape in LARGE[:2]:
        rows += [Target(loss, "cross_entropy", shape, "floor", 0.75),
                 Target(loss, "cross_entropy", shape, "faster", 3, "torch")]
    for shape in TALL:
        rows += [Target(loss, "cross_entropy", shape, "faster", 5, "torch"),
                 Target(loss, "cross_entropy", shape, "faster", 2, "sklearn")]
    rows += [Target("many threads", "cross_entropy", (1, 1000), "threads", 0.9),
             Target("many threads", "cross_entropy", (256, 1000), "threads", 1.6)]
    return rows


def _rows():
    rows = _training_rows() + _inference_rows()
    rows += [Target("call overhead", "softmax", (1, 1000), "faster", 1.0, "torch"),
             Target("call overhead", CE, (32, 1000), "faster", 3, "torch"),
             Target("thread scaling", CE, (8192, 1000), "scaling", 1.7),
             # rows < 2 x threads: a row's columns split over the team keep both cores
             # busy (16x131072 and 4x262144 split only from 9 and 3 threads on)
             Target("column split, 1 row", CE, (1, 262144), "scaling", 1.5),
             Target("column split, 1 row", "softmax", (1, 262144), "scaling", 1.5),
             Target("accuracy", "all", None, "accuracy")]
    return rows + parity_rows() + parity_rows(half.ALL_SPECS)


def parity_rows(specs=None):
    """Return the ``parity`` target rows: one per criterion of :data:`bench.parity.SPECS`."""
    specs = parity.SPECS if specs is None else specs
    return [Target(s.group, s.op, tuple(s.shape), "parity", c.bound, f"{s.key}:{c.name}")
            for s in specs for c in s.criteria]


TARGETS = _rows()


def plan(dtypes, threads):
    """List the cases the targets need.

    Parameters
    ----------
    dtypes : list of str
    threads : int
        Thread count at which speed targets are judged (all usable cores).

    Returns
    -------
    list of bench.runner.Case
        Ordered by operation, shape, dtype, threads.
    """
    keys = set()
    for t in TARGETS:
        if t.shape is None or t.kind in {"threads", "parity"}:
            continue
        keys.add((t.op, t.shape, threads))
        if t.kind == "relative":
            keys.add((t.peer, t.shape, threads))
        if t.kind == "scaling" and threads >= 2:
            keys.add((t.op, t.shape, 2))  # with its 1-thread call (CsoftmaxOneThread)
    order = list(OPS)
    # (the 16-bit dtypes have cases of their own: see bench.half)
    cases = [Case(OPS[op], shape, dtype, thr) for op, shape, thr in keys for dtype in dtypes
             if dtype not in half.DTYPES]
    return sorted(cases, key=lambda c: (order.index(c.op.name), c.shape, c.dtype, c.threads))


def scaling_keys():
    """``{(op, shape)}`` of the "scaling" targets, whose 2-thread cases time csoftmax at
    one thread too (:class:`bench.peers.CsoftmaxOneThread`)."""
    return {(t.op, t.shape) for t in TARGETS if t.kind == "scaling"}


def threads_plan():
    """Return the shapes of the many-threads targets (see :mod:`bench.many_threads`)."""
    return list(dict.fromkeys(t.shape for t in TARGETS if t.kind == "threads"))


class _Index:
    """Case results looked up by ``(op, shape, dtype, threads)``, many-threads
    results by ``(function, shape, dtype)``, parity results by case key."""

    def __init__(self, results, many_threads=(), parity_results=()):
        self.by_key = {(r["op"], tuple(r["shape"]), r["dtype"], r["threads"]): r
                       for r in results}
        self.many_threads = {(r["impl"], tuple(r["shape"]), r["dtype"]): r
                             for r in many_threads}
        self.parity = {r["key"]: r for r in parity_results}

    def get(self, op, shape, dtype, threads):
        return self.by_key.get((op, tuple(shape), dtype, threads))


def _time(result, name):
    entry = (result or {}).get("results", {}).get(name) or {}
    return entry.get("time")


def _status(result, name):
    return ((result or {}).get("results", {}).get(name) or {}).get("status")


def evaluate(target, index, dtype, threads):
    """Measure one target for one dtype.

    Parameters
    ----------
    target : Target
    index : _Index
    dtype : str
    threads : int
        Thread count of the speed targets.

    Returns
    -------
    dict
        ``value`` (float or None), ``passed`` (bool or None when not
        measurable) and ``note``.
    """
    if target.kind == "accuracy":
        return _accuracy(index, dtype)
    if target.kind == "threads":
        return _many_threads(target, index, dtype)
    if target.kind == "parity":
        return _parity(target, index, dtype)
    if dtype in half.DTYPES:  # measured by their own cases (parity rows)
        return {"value": None, "passed": None, "note": ""}
    result = index.get(target.op, target.shape, dtype, 2 if target.kind == "scaling" else threads)
    if result is None:
        return {"value": None, "passed": None,
                "note": "needs 2 usable cores" if target.kind == "scaling" else "not measured"}
    if _status(result, "csoftmax") != "ok":
        return {"value": None, "passed": False,
                "note": f"csoftmax {_status(result, 'csoftmax') or 'missing'}"}
    cs = _time(result, "csoftmax")
    note = ""
    if target.kind == "faster":
        other = _time(result, target.peer)
        value = other / cs if other else None
        if _status(result, target.peer) == "mismatch":
            note = f"{target.peer} MISMATCH"
        elif other is None:
            note = f"{target.peer} not timed"
        passed = None if value is None else value >= target.bound
        if passed is False and other and not note:
            note = _bound_note(target, result, other)
    elif target.kind == "floor":
        value = copy_ratio(result)
        passed = None if value is None else value <= target.bound
        copy = _time(result, "copyto")
        if passed is False and copy:
            note = _floor_note(target, result, copy)
    elif target.kind == "relative":
        value, note = _relative(target, result, index, dtype, threads)
        passed = None if value is None else value <= target.bound
    else:  # scaling: the 2-thread case's own 1-thread call (interleaved)
        status = _status(result, "csoftmax_1thread")
        if status not in (None, "ok"):
            return {"value": None, "passed": False, "note": f"csoftmax_1thread {status}"}
        one = _time(result, "csoftmax_1thread")
        value = one / cs if one else None
        passed = None if value is None else value >= target.bound
        if value is None:
            note = "csoftmax_1thread not timed"
    if dtype != TARGET_DTYPE and value is not None:
        return {"value": value, "passed": None, "note": "shown: the target is float32's"}
    return {"value": value, "passed": passed, "note": note}


def _floors(target, result):
    """``(time, what)`` of the call's larger floor (:func:`bench.report.larger_floor`): the
    exp floor, and the faster copy of the logits (np.copyto, or
    :class:`bench.peers.CopyFloor` on the case's threads) times the logits-sized arrays the
    call moves (:attr:`bench.ops.Op.memory_units`); None without either."""
    op = OPS.get(target.op)
    return larger_floor(op.memory_units if op else None,
                        (_time(result, "copyto"), _time(result, "copy_floor")),
                        _time(result, "exp_floor"))


def _bound_note(target, result, other):
    """What bounds a missed speed-up: the peer's time over the call's floor
    (:func:`_floors`), and "out of reach" where that misses the target too."""
    found = _floors(target, result)
    if found is None:
        return ""
    floor, what = found
    reach = "" if other / floor >= target.bound else ", out of reach"
    return f"bound: {target.peer} / {what} = {other / floor:.2f}x{reach}"


def _floor_note(target, result, copy):
    """What bounds a missed ``floor`` target: the call's floor over np.copyto's time."""
    found = _floors(target, result)
    if found is None:
        return ""
    floor, what = found
    reach = "" if floor / copy <= target.bound else ", out of reach"
    return f"bound: {what} / np.copyto = {floor / copy:.2f}x{reach}"


def _relative(target, result, index, dtype, threads):
    """``(value, note)`` of a relative target.

    Both calls timed interleaved in the case of ``target.op`` (see
    :data:`RELATIVE` and :class:`bench.peers.CsoftmaxPlain`,
    :class:`bench.peers.CsoftmaxLoss`); else csoftmax's time in the other
    operation's own case (timed apart: noisier).
    """
    own_peer, base_peer, _ = RELATIVE.get((target.op, target.peer), (None, None, ""))
    own, base = _time(result, own_peer), _time(result, base_peer)
    note = ""
    if not (own and base):
        own = _time(result, "csoftmax")
        base = _time(index.get(target.peer, target.shape, dtype, threads), "csoftmax")
        note = "timed in separate cases"
    elif own_peer == "csoftmax" and _time(result, "csoftmax_out"):
        note = f"with out=: {_time(result, 'csoftmax_out') / base:.2f}x"
    return (own / base if base and own else None), note


def _many_threads(target, index, dtype):
    """Verdict of a ``threads`` target; the other functions' ratios as a note."""
    judged, *others = IMPLS
    result = index.many_threads.get((judged.name, tuple(target.shape), dtype))
    if result is None:
        return {"value": None, "passed": None, "note": "not measured"}
    if result["status"] != "ok":
        return {"value": None, "passed": False,
                "note": f"{judged.name} {result['status']}: {result['message']}"}
    context = [f"{impl.name} {r['ratio']:.2f}x" for impl in others
               if (r := index.many_threads.get((impl.name, tuple(target.shape), dtype)))
               and r["ratio"] is not None]
    return {"value": result["ratio"], "passed": result["ratio"] >= target.bound,
            "note": ", ".join(context)}


def _parity(target, index, dtype):
    """Verdict of a ``parity`` target, as judged by :func:`bench.parity.judge`."""
    key, _, name = target.peer.partition(":")
    own = half.KEY_DTYPE.get(key, parity.DTYPE)
    if dtype != own:
        return {"value": None, "passed": None, "note": f"{own} only"}
    result = index.parity.get(key)
    row = next((c for c in (result or {}).get("criteria", []) if c["name"] == name), None)
    if row is None:
        return {"value": None, "passed": None, "note": "not measured"}
    return {"value": row["value"], "passed": row["passed"], "note": row["note"]}


def _accuracy(index, dtype):
    if dtype != "float32":
        return {"value": None, "passed": None, "note": "float32 only"}
    worst, where, passed = None, "", None
    for (op, shape, dt, thr), result in index.by_key.items():
        cs = result["results"].get("csoftmax", {}).get("err_primary")
        torch = result["results"].get("torch", {}).get("err_primary")
        if dt != dtype or cs is None or torch is None:
            continue
        ok = cs <= torch + ERROR_FLOOR
        passed = ok if passed is None else passed and ok
        ratio = cs / max(torch, ERROR_FLOOR)
        if worst is None or ratio > worst:
            worst, where = ratio, f"worst: {op} {'x'.join(map(str, shape))} t={thr}"
    return {"value": worst, "passed": passed,
            "note": where if worst is not None else "no case with PyTorch"}


def evaluate_all(results, dtypes, threads, many_threads=(), parity_results=(), rows=None):
    """Measure every target.

    Parameters
    ----------
    results : list of dict
        Case results (see :func:`bench.runner.run_case`).
    dtypes : list of str
    threads : int
    many_threads : list of dict, optional
        Many-threads results (see :func:`bench.many_threads.measure`).
    parity_results : list of dict, optional
        Parity results (see :func:`bench.parity.measure`).
    rows : list of Target, optional
        The targets to measure (default: :data:`TARGETS`).

    Returns
    -------
    list of dict
        Per target: ``group``, ``op``, ``shape``, ``criterion``, ``by_dtype``
        (dtype to the dict of :func:`evaluate`) and ``verdict`` (``PASS``,
        ``FAIL`` or ``n/a``).
    """
    index = _Index(results, many_threads, parity_results)
    targets, rows = TARGETS if rows is None else rows, []
    for target in targets:
        by_dtype = {dt: evaluate(target, index, dt, threads) for dt in dtypes}
        verdicts = [m["passed"] for m in by_dtype.values() if m["passed"] is not None]
        verdict = "n/a" if not verdicts else "PASS" if all(verdicts) else "FAIL"
        rows.append({"group": target.group, "op": target.op,
                     "shape": list(target.shape) if target.shape else "all",
                     "criterion": target.criterion, "by_dtype": by_dtype,
                     "verdict": verdict})
    return rows


def table_lines(rows, dtypes, threads, simd=None):
    """Return the Markdown lines of the targets table.

    Parameters
    ----------
    rows : list of dict
        As returned by :func:`evaluate_all`.
    dtypes : list of str
    threads : int
    simd : str, optional
        The SIMD paths in use (see :func:`bench.report.simd_text`).
    """
    lines = [f"## performance targets (SIMD path: {simd or 'unknown'}; speed at {threads} "
             "thread(s); values are ratios as in the criterion)", "",
             "| target | op | shape | criterion | " + " | ".join(dtypes) + " | result |",
             "| --- | --- | --- | --- | " + " | ".join("---:" for _ in dtypes) + " | --- |"]
    for row in rows:
        shape = row["shape"] if row["shape"] == "all" else "x".join(map(str, row["shape"]))
        cells = []
        for dt in dtypes:
            m = row["by_dtype"][dt]
            text = "—" if m["value"] is None else f"{m['value']:.2f}x"
            if m["passed"] is not None:
                text += " ok" if m["passed"] else " FAIL"
            if m["note"]:
                text += f" ({m['note']})"
            cells.append(text)
        lines.append(f"| {row['group']} | {row['op']} | {shape} | {row['criterion']} | "
                     + " | ".join(cells) + f" | **{row['verdict']}** |")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("PASS", "FAIL", "n/a")}
    lines += ["", ", ".join(f"{n} {v}" for v, n in counts.items())]
    return lines
