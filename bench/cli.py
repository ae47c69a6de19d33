"""Command line of ``python -m bench``.

Examples
--------
``python -m bench --quick``
    A tour of every operation on a few shapes, under a minute.
``python -m bench --ops softmax,cross_entropy_with_grad --shapes 8192x1000,tiny``
    Selected operations and shapes, both dtypes, 1 thread and all cores.
``python -m bench --targets``
    The cases of the performance targets, then their PASS/FAIL table.
``python -m bench --many-threads``
    8 Python threads calling ``cross_entropy(..., num_threads=1)`` at once vs one.
``python -m bench --dtypes bfloat16,float16``
    The 16-bit cases (fused loss+grad, softmax) against float32, np.copyto and PyTorch.
``python -m bench --parity``
    The 0.2 calls (class axis, non-last axis, ``where=``) against PyTorch's.
``python -m bench --targets --cpu avx2,baseline``
    The targets on forced kernel sets (csoftmax and PyTorch alike), one table each.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import half, many_threads, memory, parity, report, targets
from .ops import OPS, SHAPE_GROUPS, parse_shapes, shape_label
from .peers import PEER_NAMES, all_peers
from .runner import Case, Settings, run_plan

RESULTS_DIR = Path(__file__).parent / "results"
#: Environment variable through which ``--cpu`` hands the typed command to its subprocesses.
PARENT_COMMAND = "CSOFTMAX_BENCH_COMMAND"
#: The peers that the targets compare with (the NumPy twin and SciPy, slow and
#: in no criterion, would take most of each case's timing budget).
TARGET_PEERS = ["csoftmax", "csoftmax_out", "csoftmax_plain", "csoftmax_loss",
                "csoftmax_1thread", "sklearn", "torch", "copyto", "exp_floor", "copy_floor"]
#: The kernel sets ``--cpu`` may force (``CSOFTMAX_CPU``), slowest first.
CPU_PATHS = list(report.ATEN_CAPABILITY)
DTYPES = {"float32": "float32", "f32": "float32", "32": "float32",
          "float64": "float64", "f64": "float64", "64": "float64",
          "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "f16": "float16"}
#: Defaults of ``--quick``: a few shapes, float32, all cores, small budgets.
QUICK = {"shapes": "1x1000,32x1000,8192x1000,65536x10", "dtypes": "float32",
         "threads": "all", "budget": 0.1, "min_rounds": 3, "min_sample": 2e-4,
         "stat": "median"}
FULL = {"shapes": "all", "dtypes": "float32,float64", "threads": "1,all", "budget": 0.5,
        "min_rounds": 5, "min_sample": 1e-3, "stat": "median"}
TARGETS = {**FULL, "dtypes": "float32,float64,bfloat16,float16", "threads": "all",
           "budget": 1.0, "stat": "min"}


def _split(text):
    return [s.strip() for s in text.split(",") if s.strip()]


def _parse_ops(text):
    names = list(OPS) if text == "all" else _split(text)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; choose from {list(OPS)}")
    return [OPS[n] for n in names]


def _parse_dtypes(text):
    try:
        return list(dict.fromkeys(DTYPES[d] for d in _split(text)))
    except KeyError as exc:
        raise ValueError(f"unknown dtype {exc.args[0]!r}; use float32, float64, bfloat16, "
                         "float16") from None


def _parse_threads(text, cores):
    values = [cores if t == "all" else int(t) for t in _split(text)]
    if any(t < 1 for t in values):
        raise ValueError("thread counts must be >= 1")
    return list(dict.fromkeys(values))


def _parse_cpu(values):
    paths = list(dict.fromkeys(p for v in values for p in _split(v.lower())))
    unknown = [p for p in paths if p not in CPU_PATHS]
    if unknown:
        raise ValueError(f"unknown --cpu path(s) {unknown}; choose from {CPU_PATHS}")
    return paths


def _parse_peers(text):
    names = _split(text)
    unknown = [n for n in names if n not in PEER_NAMES]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; choose from {PEER_NAMES}")
    return ["csoftmax", *names]


def build_parser():
    """Return the argument parser of ``python -m bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n")[0], allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"ops: {', '.join(OPS)}\nshape groups: "
               + "; ".join(f"{g}: {','.join(map(shape_label, s))}"
                           for g, s in SHAPE_GROUPS.items())
               + f"\npeers: {', '.join(PEER_NAMES)}")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run (shapes {QUICK['shapes']}, {QUICK['dtypes']}, "
                             f"all cores, budget {QUICK['budget']} s)")
    parser.add_argument("--targets", action="store_true",
                        help="run the cases of the performance targets and print the "
                             "PASS/FAIL table (ignores --ops and --shapes)")
    parser.add_argument("--ops", default="all", help="comma-separated ops (default: all)")
    parser.add_argument("--shapes", help="comma-separated NxC shapes or shape groups "
                                         f"(default: all; --quick: {QUICK['shapes']})")
    parser.add_argument("--dtypes", help="float32,float64,bfloat16,float16 (default: float32,"
                                         "float64; --quick: float32; --targets: all four). "
                                         "bfloat16/float16 run the cases of bench/half.py")
    parser.add_argument("--threads", help="comma-separated thread counts, 'all' = usable "
                                          "cores (default: 1,all; --quick/--targets: all)")
    parser.add_argument("--peers", help="restrict the peers timed beside csoftmax "
                                        "(default: every installed one; --targets: "
                                        "those its criteria use)")
    parser.add_argument("--budget", type=float,
                        help="seconds of interleaved timing per case (default: "
                             f"{FULL['budget']}; --quick: {QUICK['budget']}; --targets: "
                             f"{TARGETS['budget']})")
    parser.add_argument("--stat", choices=["median", "min"],
                        help="statistic shown and used for ratios and targets: median of "
                             "the uncontended samples (default) or minimum (default of "
                             "--targets, whose verdicts should not flap with the load)")
    parser.add_argument("--many-threads", type=int, nargs="?", const=many_threads.THREADS,
                        metavar="N",
                        help="N (default %(const)s) Python threads each calling "
                             "cross_entropy(..., num_threads=1) on its own batch vs one "
                             "thread alone (and PyTorch, softmax for context), on shapes "
                             + ",".join(map(shape_label, many_threads.SHAPES))
                             + " unless --shapes; --budget: seconds per function and shape "
                             "(default 1); then exit. --targets includes its target rows")
    parser.add_argument("--parity", action="store_true",
                        help="the PyTorch parity cases alone (class axis 1, 3-D logits, "
                             "softmax over a non-last axis, where= masks; float32 at "
                             "--threads, default all cores), their timings and target "
                             "rows; --budget: seconds per case (default "
                             f"{TARGETS['budget']}); then exit. --targets includes its rows")
    parser.add_argument("--cpu", action="append", metavar="PATH",
                        help="run the rest of the command on a forced kernel set: "
                             f"{', '.join(CPU_PATHS)} (repeatable or comma-separated; one "
                             "table each), in a subprocess with CSOFTMAX_CPU=PATH and "
                             "PyTorch's ATEN_CPU_CAPABILITY of the same instruction set "
                             "(avx2, avx512, default); paths this CPU lacks are skipped")
    parser.add_argument("--training", action="store_true",
                        help="time a PyTorch training step with csoftmax.torch.cross_entropy "
                             "vs F.cross_entropy (needs torch) and exit")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory table of linear_cross_entropy cases "
                             "(each peer once more in a fresh process, after the timings)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs")
    parser.add_argument("--json", type=Path,
                        help=f"JSON output (default: {RESULTS_DIR}/<mode>.json)")
    parser.add_argument("--plot", type=Path,
                        help=f"PNG plot, needs matplotlib (default: {RESULTS_DIR}/<mode>.png)")
    return parser


def _plan(args, parser):
    """Resolve the arguments into the cases to run and their settings."""
    defaults = {**(TARGETS if args.targets else FULL), **(QUICK if args.quick else {})}
    if args.targets and args.quick:
        defaults.update(dtypes=TARGETS["dtypes"], stat=TARGETS["stat"])
    try:
        dtypes = _parse_dtypes(args.dtypes or defaults["dtypes"])
        threads = _parse_threads(args.threads or defaults["threads"], report.usable_cores())
        ops = _parse_ops(args.ops)
        shapes = parse_shapes(args.shapes or defaults["shapes"])
    except ValueError as exc:
        parser.error(str(exc))
    settings = Settings(budget=args.budget if args.budget is not None else defaults["budget"],
                        min_rounds=defaults["min_rounds"], min_sample=defaults["min_sample"],
                        seed=args.seed, stat=args.stat or defaults["stat"])
    if args.targets:
        if args.shapes or args.ops != "all":
            print("note: --targets runs its own ops and shapes", file=sys.stderr)
        cases = targets.plan(dtypes, max(threads))
    else:
        # linear_cross_entropy takes NxDxV shapes, the other operations NxC; the
        # 16-bit dtypes run the cases of bench.half
        wide = [d for d in dtypes if d not in half.DTYPES]
        cases = [Case(*key) for key in itertools.product(ops, shapes, wide, threads)
                 if len(key[1]) == (3 if key[0].linear else 2)]
        for op in ops:
            if wide and not any(c.op is op for c in cases):
                print(f"note: {op.name} skipped: no {'NxDxV' if op.linear else 'NxC'} shape "
                      "among --shapes", file=sys.stderr)
    return cases, settings, dtypes, threads


def _load_peers(wanted):
    """Import the wanted peers; return the usable ones and why others are skipped."""
    peers, skipped = [], {}
    for peer in all_peers():
        if peer.name in wanted:
            why = peer.load()
            if why is None:
                peers.append(peer)
            else:
                skipped[peer.name] = why
    return peers, skipped


def _strip_options(argv, names):
    """Return ``argv`` without the options ``names`` and their values."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not any(arg.startswith(f"{name}=") for name in names):
            out.append(arg)
    return out


def _with_suffix(path, suffix):
    """``results/targets.json`` -> ``results/targets-avx2.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-{suffix}{path.suffix}")


def _mode(args):
    return ("many_threads" if args.many_threads else "parity" if args.parity
            else "targets" if args.targets
            else "quick" if args.quick else "full")


def run_cpu_paths(args, argv):
    """Re-run the command once per ``--cpu`` path, in a subprocess.

    Each run sets ``CSOFTMAX_CPU`` to the path and ``ATEN_CPU_CAPABILITY`` to
    PyTorch's matching kernels; its JSON and plot get the path as a suffix.

    Parameters
    ----------
    args : argparse.Namespace
    argv : list of str
        The command line, ``--cpu`` included.

    Returns
    -------
    int
        The worst exit status of the runs (0 when every path was skipped);
        2 when csoftmax does not import.
    """
    paths = _parse_cpu(args.cpu)
    try:
        dispatch = importlib.import_module("csoftmax._dispatch")
    except Exception as exc:  # noqa: BLE001 - nothing to benchmark
        print(f"error: csoftmax does not import: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    available = dispatch.available_cpu_paths()
    rest = _strip_options(argv, {"--cpu", "--json", "--plot"})
    mode, status = _mode(args), 0
    for path in paths:
        if path not in available:
            print(f"# SIMD path {path}: skipped, not supported by this CPU or not built "
                  f"(available: {', '.join(available) or 'none'})\n", flush=True)
            continue
        # a forced kernel set is the compiled one: CSOFTMAX_BACKEND=numpy (the
        # fallback test run) would replace it by the NumPy twin
        env = {k: v for k, v in os.environ.items() if k != "CSOFTMAX_BACKEND"}
        env.update(CSOFTMAX_CPU=path, ATEN_CPU_CAPABILITY=report.ATEN_CAPABILITY[path])
        json_path = _with_suffix(args.json or RESULTS_DIR / f"{mode}.json", path)
        plot_path = _with_suffix(args.plot or RESULTS_DIR / f"{mode}.png", path)
        print(f"# SIMD path {path} (CSOFTMAX_CPU={path}, ATEN_CPU_CAPABILITY="
              f"{env['ATEN_CPU_CAPABILITY']})\n", flush=True)
        cmd = [sys.executable, "-m", "bench", *rest, "--json", str(json_path),
               "--plot", str(plot_path)]
        # the command typed, for the JSON (and the captions of bench.plots)
        env[PARENT_COMMAND] = json.dumps(["python", "-m", "bench", *argv])
        status = max(status, subprocess.run(cmd, env=env, check=False).returncode)
        print(flush=True)
    base = args.json or RESULTS_DIR / f"{mode}.json"
    print(f"plots of every path: python -m bench.plots {base} {Path(base).parent}",
          file=sys.stderr)
    return status


def _import_csoftmax():
    try:
        return importlib.import_module("csoftmax")
    except Exception as exc:  # noqa: BLE001 - any failure means nothing to benchmark
        print(f"error: csoftmax does not import: {type(exc).__name__}: {exc}\n"
              "(build it in place first, and run from the repository root)", file=sys.stderr)
        return None


def _payload(mode, argv, started, info, **fields):
    parent = os.environ.get(PARENT_COMMAND)
    return {"schema": "csoftmax-bench/1", "mode": mode,
            "command": ["python", "-m", "bench", *argv],
            "parent_command": json.loads(parent) if parent else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1), "machine": info, **fields}


def many_threads_main(args, parser, argv):
    """Run the many-threads measurement alone (``--many-threads``).

    Returns
    -------
    int
        0; 1 when a result disagreed or a call failed; 2 when csoftmax does not import.
    """
    try:
        dtypes = _parse_dtypes(args.dtypes or "float32")
        shapes = parse_shapes(args.shapes) if args.shapes else many_threads.SHAPES
    except ValueError as exc:
        parser.error(str(exc))
    if args.many_threads < 1:
        parser.error("--many-threads needs at least 1 thread")
    csoftmax = _import_csoftmax()
    if csoftmax is None:
        return 2
    peers, skipped = _load_peers({"csoftmax", "torch"})
    budget = args.budget if args.budget is not None else 1.0
    stat = args.stat or "min"
    info = report.machine_info(peers, csoftmax)
    print("\n".join(["## csoftmax benchmark: many threads", "", *report.machine_lines(info),
                     f"- timing: {budget:g} s per function and shape, {many_threads.ROUNDS} "
                     f"alternating rounds of 1 and {args.many_threads} threads; rates: "
                     + ("best round" if stat == "min" else "median round"), ""]))
    started = time.time()
    results, mt_skipped = many_threads.run(shapes, dtypes, args.many_threads, budget, stat,
                                           args.seed, stream=sys.stderr)
    print("\n".join(many_threads.table_lines(results, mt_skipped, args.many_threads)))
    problems = [f"{r['impl']} {shape_label(r['shape'])} {r['dtype']}: "
                f"{r['status'].upper()}: {r['message']}"
                for r in results if r["status"] != "ok"]
    payload = _payload("many_threads", argv, started, info, many_threads=results,
                       skipped=mt_skipped, problems=problems,
                       settings={"budget": budget, "stat": stat, "seed": args.seed,
                                 "n_threads": args.many_threads, "dtypes": dtypes})
    json_path = args.json or RESULTS_DIR / "many_threads.json"
    report.write_json(json_path, payload)
    print(f"JSON: {json_path}", file=sys.stderr)
    return 1 if problems else 0


def parity_main(args, parser, argv):
    """Run the PyTorch parity cases alone (``--parity``).

    Returns
    -------
    int
        0; 1 when a result disagreed or a call failed; 2 when csoftmax does not import.
    """
    try:
        threads = max(_parse_threads(args.threads or "all", report.usable_cores()))
    except ValueError as exc:
        parser.error(str(exc))
    csoftmax = _import_csoftmax()
    if csoftmax is None:
        return 2
    peers, skipped = _load_peers({"csoftmax", "torch"})
    budget = args.budget if args.budget is not None else TARGETS["budget"]
    stat = args.stat or TARGETS["stat"]
    info = report.machine_info(peers, csoftmax)
    simd = report.simd_text(info["simd_path"])
    print("\n".join(["## csoftmax benchmark: PyTorch parity", "", *report.machine_lines(info),
                     f"- timing: interleaved, {budget:g} s per case, >= "
                     f"{TARGETS['min_rounds']} rounds, samples >= "
                     f"{TARGETS['min_sample'] * 1e3:g} ms; time = "
                     + ("minimum of the samples" if stat == "min" else "median of the "
                        "samples not slowed by contention"),
                     *[f"- skipped: {name} ({why})" for name, why in skipped.items()], ""]))
    started = time.time()
    results = parity.run(parity.SPECS, threads, budget, stat, args.seed,
                         TARGETS["min_rounds"], TARGETS["min_sample"], stream=sys.stderr)
    print("\n".join(parity.table_lines(results, simd)))
    rows = targets.evaluate_all([], [parity.DTYPE], threads, parity_results=results,
                                rows=targets.parity_rows())
    print("\n" + "\n".join(targets.table_lines(rows, [parity.DTYPE], threads, simd)))
    problems = parity.problems(results)
    if problems:
        print(f"\n## !! {len(problems)} MISMATCH / ERROR(S) !!\n")
        print("\n".join(f"- {p}" for p in problems))
    payload = _payload("parity", argv, started, info, parity=results, targets=rows,
                       skipped=skipped, problems=problems,
                       settings={"budget": budget, "stat": stat, "seed": args.seed,
                                 "threads": threads, "dtypes": [parity.DTYPE]})
    json_path = args.json or RESULTS_DIR / "parity.json"
    report.write_json(json_path, payload)
    print(f"JSON: {json_path}", file=sys.stderr)
    return 1 if problems else 0


def _measure(args, mode, argv, csoftmax, cases, settings, dtypes, threads, peers, skipped):
    """Time the cases (and, for ``--targets``, the many-threads and parity measurements;
    for 16-bit dtypes, the cases of :mod:`bench.half`), print their tables; return the
    JSON payload."""
    info = report.machine_info(peers, csoftmax)
    print("\n".join(report.header_lines(info, skipped, settings)))
    started = time.time()
    results = []
    if cases:  # (none with 16-bit dtypes alone: bench.half has its own table)
        table = report.Table(peers)
        table.header()
        results = run_plan(cases, peers, settings, on_result=table.row)
    mt_results = []
    wide = [d for d in dtypes if d not in half.DTYPES]
    if args.targets and wide:
        mt_results, _ = many_threads.run(targets.threads_plan(), wide, budget=settings.budget,
                                         stat=settings.stat, seed=settings.seed,
                                         stream=sys.stderr)
        print("\n" + "\n".join(many_threads.table_lines(mt_results)))
    parity_results = []
    if args.targets and parity.DTYPE in dtypes:
        parity_results = parity.run(parity.SPECS, max(threads), settings.budget,
                                    settings.stat, settings.seed, settings.min_rounds,
                                    settings.min_sample, stream=sys.stderr)
        print("\n" + "\n".join(parity.table_lines(
            parity_results, report.simd_text(info["simd_path"]))))
    half_results = []
    half_dtypes = [d for d in dtypes if d in half.DTYPES]
    if half_dtypes:
        half_results, half_skipped = half.run(half_dtypes, max(threads), settings.budget,
                                              settings.stat, settings.seed,
                                              settings.min_rounds, settings.min_sample,
                                              stream=sys.stderr)
        print("\n" + "\n".join(half.table_lines(half_results, half_skipped,
                                                  report.simd_text(info["simd_path"]))))
    memory_rows = []
    if not args.no_memory:
        memory_rows = memory.linear_memory(results, peers, settings.seed)
        if memory_rows:
            labels = {p.name: p.label for p in peers}
            print("\n" + "\n".join(memory.table_lines(memory_rows, labels)))

    problems = report.problems(results) + [
        f"many threads: {r['impl']} {shape_label(r['shape'])} {r['dtype']}: "
        f"{r['status'].upper()}: {r['message']}" for r in mt_results if r["status"] != "ok"]
    problems += parity.problems(parity_results) + parity.problems(half_results)
    if problems:
        print(f"\n## !! {len(problems)} MISMATCH / ERROR(S) !!\n")
        print("\n".join(f"- {p}" for p in problems))
    payload = _payload(
        mode, argv, started, info,
        settings={**vars(settings), "dtypes": dtypes, "threads": threads,
                  "ops": list(dict.fromkeys(c.op.name for c in cases)),
                  "shapes": list(dict.fromkeys(shape_label(c.shape) for c in cases))},
        peers=[p.name for p in peers], skipped=skipped, cases=results,
        many_threads=mt_results or None, parity=parity_results or None,
        half=half_results or None, memory=memory_rows or None, problems=problems,
        targets=None)
    if args.targets:
        payload["targets"] = rows = targets.evaluate_all(results, dtypes, max(threads),
                                                         mt_results,
                                                         parity_results + half_results)
        simd = report.simd_text(info["simd_path"])
        print("\n" + "\n".join(targets.table_lines(rows, dtypes, max(threads), simd)))
    return payload


def main(argv=None):
    """Run the benchmark.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0; 1 when a result disagreed or a call failed; 2 on a usage error or
        when csoftmax does not import.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.cpu:
        try:
            _parse_cpu(args.cpu)
        except ValueError as exc:
            parser.error(str(exc))
        return run_cpu_paths(args, argv)
    if args.training:
        from . import training

        return training.main(max(_parse_threads(args.threads or "all", report.usable_cores())))
    if args.many_threads is not None:
        if args.targets or args.parity:
            parser.error("--many-threads runs alone; --targets includes its target rows")
        return many_threads_main(args, parser, argv)
    if args.parity:
        if args.targets:
            parser.error("--parity runs alone; --targets includes its target rows")
        return parity_main(args, parser, argv)
    mode = _mode(args)
    cases, settings, dtypes, threads = _plan(args, parser)
    try:
        wanted = (_parse_peers(args.peers) if args.peers
                  else TARGET_PEERS if args.targets else PEER_NAMES if cases
                  else ["csoftmax", "torch"])  # 16-bit dtypes alone: bench.half's calls
    except ValueError as exc:
        parser.error(str(exc))
    csoftmax = _import_csoftmax()
    if csoftmax is None:
        return 2
    peers, skipped = _load_peers(wanted)
    if "csoftmax" in skipped:
        print(f"error: {skipped['csoftmax']}", file=sys.stderr)
        return 2

    json_path = Path(args.json or RESULTS_DIR / f"{mode}.json")
    table_path = json_path.with_suffix(".md")
    with report.Tee(table_path):
        payload = _measure(args, mode, argv, csoftmax, cases, settings, dtypes, threads,
                           peers, skipped)
    report.write_json(json_path, payload)
    plot_path = args.plot or RESULTS_DIR / f"{mode}.png"
    try:
        from . import plots

        plotted = plots.speedup_figure({**payload, "_stem": mode}, plot_path)
    except ImportError:
        plotted = 'matplotlib is not installed: pip install -e ".[bench]" for the plot'
    print(f"\ntable: {table_path}\nJSON:  {json_path}\nplot:  "
          + (str(plotted) if isinstance(plotted, Path) else f"none ({plotted})")
          + f"\nmore plots: python -m bench.plots {json_path} {json_path.parent}",
          file=sys.stderr)
    return 1 if payload["problems"] else 0
