"""Pictures of the bench results: the plots and tables of the documentation's performance pages.

``python -m bench.plots RESULTS.json [...] OUTDIR`` reads the JSON files that ``python -m
bench`` writes and puts into ``OUTDIR``, for each run (``<stem>`` = the JSON file's name):

``<stem>-speedup.png``
    csoftmax's speed-up over each peer (PyTorch, scikit-learn, SciPy, its NumPy twin), per
    operation and shape: peer time / csoftmax time, at the run's largest thread count.
``<stem>-floor.png``
    csoftmax's and PyTorch's time as a multiple of ``np.copyto`` of the same array (the memory
    floor), on arrays of at least a million elements.
``<stem>-threads.png``
    thread scaling (a case's own 1-thread call, or cases at 1 and more threads) and the
    many-threads measurement (N Python threads calling at once vs one), where the run has them.
``<stem>-cases.csv``, ``<stem>-targets.csv``
    every timing (seconds per call) and every target verdict of the run.

and, over all the runs: ``simd.png`` (AVX-512 against AVX2, when runs of both paths are
given), ``headline.png`` (the speed-up over PyTorch of the main calls: the README's picture)
and ``summary.md`` (the command, machine, SIMD paths and the targets not met; included by
the performance page). Each picture names the command, machine and SIMD path that made it.

A path ``results/targets.json`` that does not exist stands for the files that ``--cpu``
writes beside it (``targets-avx512.json``, ``targets-avx2.json``, ...).  Needs matplotlib
(``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from .ops import shape_label

#: The peers compared, in panel order, with their labels.
PEERS = {"torch": "PyTorch", "sklearn": "scikit-learn", "scipy": "SciPy",
         "numpy_twin": "NumPy twin"}
#: The calls of the headline picture, in order (those the runs timed are shown).
HEADLINE = [("cross_entropy_with_grad", (8192, 1000)), ("cross_entropy_with_grad", (1024, 32000)),
            ("cross_entropy_with_grad", (65536, 10)), ("cross_entropy", (1, 1000)),
            ("cross_entropy", (8192, 1000)), ("cross_entropy", (65536, 10)),
            ("softmax", (8192, 1000)), ("softmax", (4096, 4096)), ("log_softmax", (8192, 1000)),
            ("log_softmax", (1, 1000)), ("logsumexp", (1, 1000)), ("logsumexp", (256, 1000))]
#: Fewest elements of a case in the memory-floor picture (smaller arrays stay in cache).
FLOOR_MIN_ELEMENTS = 1 << 20
PATH_ORDER = ["avx512", "avx2", "baseline", "numpy"]


# ---------------------------------------------------------------------------------------------
# reading the runs


def expand(paths):
    """Resolve the JSON paths given: a missing ``x.json`` stands for the runs that
    ``--json x.json --cpu ...`` wrote beside it, ``x-<path>.json`` for each SIMD path of
    :data:`PATH_ORDER` (not every ``x-*.json``: other runs kept beside them, such as
    ``x-zen3-avx2.json``, stay out).

    Returns
    -------
    list of pathlib.Path
    """
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
            continue
        siblings = [path.with_name(f"{path.stem}-{simd}.json") for simd in PATH_ORDER]
        siblings = [p for p in siblings if p.is_file()]
        if not siblings:
            raise FileNotFoundError(f"no bench results at {path} (nor "
                                    f"{path.stem}-<{'|'.join(PATH_ORDER)}>.json)")
        found += siblings
    return found


def load(paths):
    """Read bench JSON files; return the runs, AVX-512 first (see :data:`PATH_ORDER`)."""
    runs = []
    for path in expand(paths):
        run = json.loads(Path(path).read_text())
        run["_path"], run["_stem"] = str(path), Path(path).stem
        runs.append(run)
    return sorted(runs, key=lambda r: (_order(simd_path(r)), r["_stem"]))


def _order(path):
    return PATH_ORDER.index(path) if path in PATH_ORDER else len(PATH_ORDER)


def simd_path(run):
    """csoftmax's SIMD path in a run: ``avx512``, ``avx2``, ``baseline`` or ``numpy``."""
    return (run.get("machine", {}).get("simd_path") or {}).get("csoftmax") or "numpy"


def path_label(path):
    return {"avx512": "AVX-512", "avx2": "AVX2", "baseline": "baseline",
            "numpy": "NumPy backend"}.get(path, path)


def command(run):
    """The command that made a run: the one typed, when ``--cpu`` ran it in a subprocess."""
    return " ".join(run.get("parent_command") or run.get("command") or ["python -m bench"])


def machine_text(run, runs=None):
    """``<CPU model> (<n> cores); csoftmax <path>, PyTorch <path>`` (paths of ``runs``, if
    given, joined by ``/``)."""
    m = run.get("machine", {})
    cpu, cores = m.get("cpu", {}), m.get("threads", {}).get("usable_cores")
    runs = runs or [run]
    ours = " / ".join(path_label(simd_path(r)) for r in runs)
    theirs = " / ".join(filter(None, ((r.get("machine", {}).get("simd_path") or {}).get("torch")
                                      for r in runs)))
    return (f"{cpu.get('model', '?')} ({cores} usable cores); csoftmax {ours}"
            + (f", PyTorch {theirs}" if theirs else ""))


def caption(run, runs=None):
    """The text under each picture: command, machine and SIMD path(s), date, versions."""
    versions = run.get("machine", {}).get("versions", {})
    soft = ", ".join(f"{k} {versions[k]}" for k in ("numpy", "torch") if k in versions)
    return (f"$ {command(run)}\n{machine_text(run, runs)}; {soft}; "
            f"{run.get('started', '')[:10]}; time = {run.get('settings', {}).get('stat', '?')} "
            "of the interleaved samples")


def _cases(run, threads=None):
    """The run's case results at ``threads`` (default: its largest), float32 first dtype."""
    cases = run.get("cases") or []
    if not cases:
        return []
    threads = threads or max(c["threads"] for c in cases)
    dtypes = list(dict.fromkeys(c["dtype"] for c in cases))
    dtype = "float32" if "float32" in dtypes else dtypes[0]
    return [c for c in cases if c["threads"] == threads and c["dtype"] == dtype]


def _time(case, peer):
    entry = case["results"].get(peer) or {}
    return entry.get("time") if entry.get("status") != "error" else None


def speedups(run, peer):
    """``{(op, shape): peer time / csoftmax time}`` at the run's largest thread count."""
    out = {}
    for case in _cases(run):
        cs, other = _time(case, "csoftmax"), _time(case, peer)
        if cs and other:
            out[case["op"], tuple(case["shape"])] = other / cs
    return out


# ---------------------------------------------------------------------------------------------
# figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _log_axis(ax, which, values, label):
    """Make ``ax``'s ``which`` ("x"/"y") axis a log ratio axis: ``2x``-style ticks around
    every value and 1."""
    import matplotlib.ticker as ticker

    low, high = min(*values, 1.0), max(*values, 1.0)
    getattr(ax, f"set_{which}scale")("log")
    getattr(ax, f"set_{which}lim")(low / 1.4, high * 1.6)
    axis = getattr(ax, f"{which}axis")
    wide = high / low > 300
    axis.set_major_locator(ticker.LogLocator(subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FormatStrFormatter("%gx"))
    axis.set_minor_formatter(ticker.NullFormatter())
    axis.set_label_text(label)


def _finish(fig, text, path):
    """Put the caption under the figure (wrapped to its width), save it, close it."""
    import textwrap

    import matplotlib.pyplot as plt

    width = int(fig.get_figwidth() * 14)  # 7-point monospace characters per line, with room
    lines = [piece for line in text.splitlines()
             for piece in textwrap.wrap(line, width, subsequent_indent="  ")]
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="0.35", family="monospace",
             va="bottom")
    fig.tight_layout(rect=(0, (0.13 * len(lines) + 0.1) / fig.get_figheight(), 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _grouped_bars(ax, groups, series, values, *, fmt="%.3g"):
    """Bars of ``values[(series, group)]``, groups along x, one colour per series."""
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        xs = [j for j, g in enumerate(groups) if (name, g) in values]
        if xs:
            bars = ax.bar([x + (i - (len(series) - 1) / 2) * width for x in xs],
                          [values[name, groups[x]] for x in xs], width, label=name,
                          color=f"C{i}")
            ax.bar_label(bars, fmt=fmt, fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.axhline(1.0, color="black", linewidth=0.8)


def _ratio_text(value):
    """``3.5x``, ``24x``, ``0.83x``, ``1200x``: two significant digits, no exponent."""
    return f"{value:.2g}x" if value < 100 else f"{value:.0f}x"


def speedup_figure(run, path):
    """csoftmax's speed-up over each peer: one heat map per peer, shapes by operations.

    Returns
    -------
    pathlib.Path or str
        The file written, or why there is none.
    """
    import numpy as np

    panels = {label: speedups(run, peer) for peer, label in PEERS.items()}
    panels = {label: p for label, p in panels.items() if p}
    if not panels:
        return "no case timed csoftmax and a peer"
    plt = _pyplot()
    shapes = sorted({s for p in panels.values() for _, s in p}, key=lambda s: (s[1], s[0]))
    columns = {label: list(dict.fromkeys(op for op, _ in p)) for label, p in panels.items()}
    widths = [len(c) for c in columns.values()]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, width_ratios=widths,
                             figsize=(1.5 + 0.62 * sum(widths) + 0.3 * len(panels),
                                      0.27 * len(shapes) + 2.6))
    threads = max(c["threads"] for c in _cases(run))
    limit = np.log10(30.0)  # colours saturate at 30x either way
    for k, (ax, (label, panel)) in enumerate(zip(axes[0], panels.items())):
        ops = columns[label]
        grid = np.full((len(shapes), len(ops)), np.nan)
        for (op, shape), value in panel.items():
            grid[shapes.index(shape), ops.index(op)] = value
        ax.imshow(np.log10(grid), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                strong = abs(np.log10(value)) > 0.6 * limit
                ax.text(j, i, _ratio_text(value), ha="center", va="center", fontsize=7.5,
                        color="white" if strong else "black")
        ax.xaxis.tick_top()
        ax.set_xticks(range(len(ops)), ops, rotation=35, ha="left", fontsize=7.5)
        ax.set_yticks(range(len(shapes)),
                      [shape_label(s) for s in shapes] if k == 0 else [], fontsize=7.5)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_xlabel(f"vs {label}", fontsize=9, fontweight="bold")
    fig.suptitle(f"Peer time / csoftmax time ({path_label(simd_path(run))}, {threads} threads;"
                 " blue > 1: csoftmax faster; blank: not timed)", fontsize=9, y=0.995)
    return _finish(fig, caption(run), path)


def floor_figure(run, path):
    """csoftmax's and PyTorch's time over ``np.copyto``'s, on arrays of >= 1M elements."""
    rows = []
    for case in _cases(run):
        shape = tuple(case["shape"])
        copy = _time(case, "copyto")
        if not copy or shape[0] * shape[1] < FLOOR_MIN_ELEMENTS:
            continue
        own = _time(case, "csoftmax_out") or _time(case, "csoftmax")
        torch = _time(case, "torch")
        if own:
            rows.append((f"{case['op']} {shape_label(shape)}", own / copy,
                         torch / copy if torch else None))
    if not rows:
        return "no case of >= 1M elements timed with np.copyto"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 0.32 * len(rows) + 1.6))
    ys = range(len(rows))[::-1]
    height = 0.38
    ax.barh([y + height / 2 for y in ys], [r[1] for r in rows], height, color="C0",
            label="csoftmax (out= where it has one)")
    torch = [(y, r[2]) for y, r in zip(ys, rows) if r[2]]
    if torch:
        ax.barh([y - height / 2 for y, _ in torch], [v for _, v in torch], height, color="C1",
                label="PyTorch")
    for y, r in zip(ys, rows):
        ax.text(r[1], y + height / 2, f" {r[1]:.2f}", va="center", fontsize=6)
    ax.set_yticks(list(ys), [r[0] for r in rows], fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.text(1.0, len(rows) - 0.4, " np.copyto = 1", fontsize=7)
    _log_axis(ax, "x", [r[1] for r in rows] + [v for _, v in torch],
              "time / time of np.copyto of the same array (the memory floor)")
    ax.set_title(f"Time against the memory floor ({path_label(simd_path(run))}; "
                 "< 1: faster than copying the input once)")
    ax.legend(fontsize=7, loc="best")
    return _finish(fig, caption(run), path)


def scaling(run):
    """``{(op, shape, threads): time at 1 thread / time at threads}`` of the run: the 1-thread
    call timed in the case itself (``csoftmax_1thread``), else a case at 1 thread."""
    cases = run.get("cases") or []
    index = {(c["op"], tuple(c["shape"]), c["dtype"], c["threads"]): _time(c, "csoftmax")
             for c in cases}
    out = {}
    for c in cases:
        op, shape, dtype, threads = c["op"], tuple(c["shape"]), c["dtype"], c["threads"]
        t = index[op, shape, dtype, threads]
        one = _time(c, "csoftmax_1thread") or index.get((op, shape, dtype, 1))
        if threads > 1 and t and one:
            out[op, shape, threads] = one / t
    return out


def threads_figure(run, path):
    """Thread scaling of one call, and N calling Python threads against one."""
    scale = scaling(run)
    many = [r for r in run.get("many_threads") or [] if r.get("ratio") is not None]
    if not scale and not many:
        return "no case timed at 1 and more threads, no many-threads measurement"
    plt = _pyplot()
    fig, axes = plt.subplots(1, bool(scale) + bool(many), squeeze=False, figsize=(10, 3.8))
    axes = list(axes[0])
    if scale:
        ax = axes.pop(0)
        labels = [f"{op}\n{shape_label(s)}, {t} thr" for op, s, t in scale]
        bars = ax.bar(range(len(scale)), list(scale.values()), color="C0")
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
        ax.set_xticks(range(len(scale)), labels, fontsize=7)
        for t in sorted({t for *_, t in scale}):
            ax.axhline(t, color="0.6", linewidth=0.8, linestyle="--")
        ax.set_ylabel("time on 1 thread / time on N")
        ax.set_title("One call on N OpenMP threads (dashed: N)")
    if many:
        ax = axes.pop(0)
        impls = list(dict.fromkeys(r["impl"] for r in many))
        shapes = list(dict.fromkeys(shape_label(r["shape"]) for r in many))
        values = {(r["impl"], shape_label(r["shape"])): r["ratio"] for r in many}
        _grouped_bars(ax, shapes, impls, values, fmt="%.2f")
        n = many[0].get("n_threads") or "N"
        ax.set_ylabel(f"calls/s of {n} Python threads /\ncalls/s of one")
        ax.set_title(f"{n} Python threads calling at once (num_threads=1)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Threads ({path_label(simd_path(run))})", fontsize=10)
    return _finish(fig, caption(run), path)


def simd_figure(runs, path):
    """AVX-512 against AVX2: the speed-up over PyTorch on each, and csoftmax's own ratio."""
    by_path = {simd_path(r): r for r in runs}
    if not {"avx512", "avx2"} <= by_path.keys():
        return "needs runs on both the avx512 and the avx2 path (--cpu avx512,avx2)"
    fast, slow = by_path["avx512"], by_path["avx2"]
    over = {p: speedups(by_path[p], "torch") for p in ("avx512", "avx2")}
    own = {}
    times = {(c["op"], tuple(c["shape"])): _time(c, "csoftmax") for c in _cases(slow)}
    for c in _cases(fast):
        t512, t2 = _time(c, "csoftmax"), times.get((c["op"], tuple(c["shape"])))
        if t512 and t2:
            own[c["op"], tuple(c["shape"])] = t2 / t512
    keys = sorted(set(over["avx512"]) | set(over["avx2"]) | set(own),
                  key=lambda k: (k[0], k[1][1], k[1][0]))
    if not keys:
        return "no case timed on both paths"
    plt = _pyplot()
    labels = [f"{op} {shape_label(s)}" for op, s in keys]
    fig, (left, right) = plt.subplots(1, 2, sharey=True, width_ratios=(3, 2),
                                      figsize=(10.0, 0.2 * len(keys) + 1.9))
    ys = list(range(len(keys)))[::-1]
    height = 0.4
    for i, p in enumerate(over):
        pos = [(y + height / 2 - i * height, over[p][k]) for y, k in zip(ys, keys)
               if k in over[p]]
        bars = left.barh([y for y, _ in pos], [v for _, v in pos], height, color=f"C{i}",
                         label=f"{path_label(p)}: csoftmax and PyTorch")
        left.bar_label(bars, labels=[_ratio_text(v) for _, v in pos], fontsize=5.5, padding=1)
    left.set_yticks(ys, labels, fontsize=6.5)
    left.axvline(1.0, color="black", linewidth=0.8)
    _log_axis(left, "x", [v for p in over for v in over[p].values()],
              "PyTorch time / csoftmax time")
    left.set_title("Speed-up over PyTorch on each path", fontsize=9)
    left.legend(fontsize=7, loc="lower right")
    pos = [(y, own[k]) for y, k in zip(ys, keys) if k in own]
    bars = right.barh([y for y, _ in pos], [v for _, v in pos], 0.7, color="C2")
    right.bar_label(bars, fmt="%.2f", fontsize=5.5, padding=1)
    right.axvline(1.0, color="black", linewidth=0.8)
    _log_axis(right, "x", [v for _, v in pos], "csoftmax AVX2 time / AVX-512 time")
    right.set_title("csoftmax AVX-512 vs AVX2 (> 1: AVX-512 faster)", fontsize=9)
    right.tick_params(axis="y", length=0)
    return _finish(fig, caption(fast, [fast, slow]), path)


def headline_figure(runs, path):
    """The README's picture: speed-up over PyTorch of the main calls, one bar per path."""
    over = {simd_path(r): speedups(r, "torch") for r in runs}
    over = {p: v for p, v in over.items() if v}
    if not over:
        return "no case timed csoftmax and PyTorch"
    keys = [k for k in HEADLINE if any(k in v for v in over.values())]
    if not keys:  # other shapes: the first dozen calls timed
        keys = list(dict.fromkeys(k for v in over.values() for k in v))[:12]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 0.36 * len(keys) * max(len(over), 1) ** 0.5 + 1.6))
    height = 0.8 / len(over)
    ys = list(range(len(keys)))[::-1]
    for i, (p, values) in enumerate(over.items()):
        pos = [(y + (len(over) - 1) / 2 * height - i * height, values[k])
               for y, k in zip(ys, keys) if k in values]
        bars = ax.barh([y for y, _ in pos], [v for _, v in pos], height, color=f"C{i}",
                       label=f"{path_label(p)} (PyTorch on the same instruction set)")
        ax.bar_label(bars, labels=[f"{v:.1f}x" for _, v in pos], fontsize=7, padding=2)
    ax.set_yticks(ys, [f"{op} {shape_label(s)}" for op, s in keys], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    _log_axis(ax, "x", [v[k] for v in over.values() for k in keys if k in v],
              "PyTorch time / csoftmax time (> 1: csoftmax faster)")
    threads = max(c["threads"] for c in _cases(runs[0]))
    ax.set_title(f"csoftmax vs PyTorch on the CPU (float32, {threads} threads)")
    ax.legend(fontsize=7, loc="lower right")
    return _finish(fig, caption(runs[0], [r for r in runs if simd_path(r) in over]), path)


# ---------------------------------------------------------------------------------------------
# tables


def write_cases_csv(run, path):
    """Every timing of a run: one line per case, seconds per call of each peer."""
    cases = run.get("cases") or []
    peers = list(dict.fromkeys(p for c in cases for p in c["results"]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["op", "shape", "dtype", "threads", *(f"{p}_s" for p in peers),
                      *(f"{p}/csoftmax" for p in peers if p != "csoftmax")])
        for c in cases:
            cs = _time(c, "csoftmax")
            times = [_time(c, p) for p in peers]
            out.writerow([c["op"], shape_label(c["shape"]), c["dtype"], c["threads"],
                          *("" if t is None else f"{t:.4g}" for t in times),
                          *("" if not (t and cs) else f"{t / cs:.3f}"
                            for p, t in zip(peers, times) if p != "csoftmax")])
    return Path(path)


def _target_key(row):
    shape = row["shape"] if row["shape"] == "all" else shape_label(row["shape"])
    return row["group"], row["op"], shape, row["criterion"]


def _target_cell(row):
    cells = []
    for m in row["by_dtype"].values():
        if m["value"] is None:
            cells.append("n/a" if m["passed"] is None else "FAIL")
            continue
        verdict = "" if m["passed"] is None else " ok" if m["passed"] else " FAIL"
        bound = m.get("note", "")  # what bounds a failure (bench.targets, bench.parity)
        bound = f" ({bound})" if m["passed"] is False and bound.startswith("bound:") else ""
        cells.append(f"{m['value']:.2f}x{verdict}{bound}")
    return "; ".join(cells)


def targets_table(runs):
    """``(paths, {target key: {path: (cell, verdict)}})`` over the runs that judged targets."""
    judged = [r for r in runs if r.get("targets")]
    paths = [simd_path(r) for r in judged]
    table = {}
    for run, path in zip(judged, paths):
        for row in run["targets"]:
            table.setdefault(_target_key(row), {})[path] = (_target_cell(row), row["verdict"])
    return paths, table


def write_targets_csv(runs, path):
    """Every target of the runs, one column per SIMD path."""
    paths, table = targets_table(runs)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["target", "op", "shape", "criterion", *map(path_label, paths)])
        for key, cells in table.items():
            out.writerow([*key, *(cells.get(p, ("", ""))[0] for p in paths)])
    return Path(path)


def _download(text, target):
    """A MyST download link: the file is copied into the site (whatever its suffix: a
    plain link to a ``.md`` file would be read as a link to a page)."""
    return f"{{download}}`{text} <{target}>`"


def summary_lines(runs, written, prefix):
    """The Markdown that the performance page includes: runs, files, targets not met."""
    lines = ["| run | command | machine and SIMD path | date | files |",
             "| --- | --- | --- | --- | --- |"]
    for run in runs:
        here = Path(run["_path"]).parent.resolve() == Path(written["dir"]).resolve()
        files = []
        if here:  # the JSON, and the Markdown tables that python -m bench writes beside it
            files.append(_download("JSON", prefix + Path(run["_path"]).name))
            if Path(run["_path"]).with_suffix(".md").exists():
                files.append(_download("tables", f"{prefix}{run['_stem']}.md"))
        if f"{run['_stem']}-cases.csv" in written["files"]:
            files.append(_download("CSV", f"{prefix}{run['_stem']}-cases.csv"))
        lines.append(f"| {run['_stem']} | `{command(run)}` | {machine_text(run)} | "
                     f"{run.get('started', '')[:16].replace('T', ' ')} | {', '.join(files)} |")
    paths, table = targets_table(runs)
    if table:
        failed = {k: v for k, v in table.items()
                  if any(verdict == "FAIL" for _, verdict in v.values())}
        passed = sum(all(verdict == "PASS" for _, verdict in v.values()) for v in table.values())
        lines += ["", f"Targets: {passed} of {len(table)} met on every path (the "
                      f"{_download('full table', prefix + 'targets.csv')})."]
    if table and failed:
        lines += ["", "<details>",
                  f"<summary>The {len(failed)} targets not met on some path (values as in "
                  "the criterion)</summary>", "",
                  "| target | op | shape | criterion | "
                  + " | ".join(map(path_label, paths)) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---:" for _ in paths) + " |"]
        for key, cells in failed.items():
            lines.append("| " + " | ".join(key) + " | "
                         + " | ".join(cells.get(p, ("—", ""))[0] for p in paths) + " |")
        lines += ["", "</details>"]
    return lines


def write_all(json_paths, outdir, prefix="../_static/perf/"):
    """Write every picture and table of :mod:`bench.plots` into ``outdir``.

    Returns
    -------
    dict
        file name to path written, or to why it was not.
    """
    runs = load(json_paths)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    done = {}
    for run in runs:
        stem = run["_stem"]
        done[f"{stem}-speedup.png"] = speedup_figure(run, outdir / f"{stem}-speedup.png")
        done[f"{stem}-floor.png"] = floor_figure(run, outdir / f"{stem}-floor.png")
        done[f"{stem}-threads.png"] = threads_figure(run, outdir / f"{stem}-threads.png")
        if run.get("cases"):
            done[f"{stem}-cases.csv"] = write_cases_csv(run, outdir / f"{stem}-cases.csv")
    done["simd.png"] = simd_figure(runs, outdir / "simd.png")
    done["headline.png"] = headline_figure(runs, outdir / "headline.png")
    if any(r.get("targets") for r in runs):
        done["targets.csv"] = write_targets_csv(runs, outdir / "targets.csv")
    files = {name for name, value in done.items() if isinstance(value, Path)}
    summary = summary_lines(runs, {"dir": outdir, "files": files}, prefix)
    (outdir / "summary.md").write_text("\n".join(summary) + "\n")
    done["summary.md"] = outdir / "summary.md"
    return done


def main(argv=None):
    """``python -m bench.plots RESULTS.json [...] OUTDIR``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.plots",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path,
                        help="bench JSON files (x.json also stands for the "
                             "x-<path>.json that --cpu wrote)")
    parser.add_argument("outdir", type=Path, help="folder of the PNG, CSV and summary.md")
    parser.add_argument("--link-prefix", default="../_static/perf/",
                        help="prefix of the links in summary.md (default: %(default)s, "
                             "from docs/performance/ to docs/_static/perf/)")
    args = parser.parse_args(argv)
    try:
        done = write_all(args.json, args.outdir, args.link_prefix)
    except (FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, value in done.items():
        print(f"{name}: {value}" if isinstance(value, Path) else f"{name}: skipped ({value})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
