"""Time two or more builds of csoftmax's kernels in one process, interleaved.

On a shared machine the speed of a process drifts by tens of percent from minute to
minute, so builds timed in alternating processes differ by more than most kernel
changes do.  This loads each build's compiled kernel module (of the instruction set
asked for) side by side in one process, binds a ``Frontend`` to each, and times the
same calls through them in turn, alternating their order every round.  It prints each
build's minimum and first quartile and the median of the per-round ratios to the first
build (a paired ratio: both calls of a round met the same load).

A build is a directory holding a built ``csoftmax`` package, for example a copy of the
working tree's ``csoftmax/`` after ``python setup.py build_ext --inplace``::

    cp -r csoftmax /tmp/before/                      # the build before a change
    # ... change, rebuild ...
    python tools/ab_builds.py /tmp/before . --cpu avx2 --threads 2 --reps 20

The Python layer is the one imported (this working tree's); only the kernel modules
differ.  The calls go through each build's ``Frontend`` methods, the full path; with
``--public`` through the build's public functions instead (``fr`` is then the kernel
module, whose ``fr.cross_entropy`` ... try the C fast path first, as
``csoftmax.cross_entropy`` does): a change to the fast path shows only there.

``--gap SECONDS`` sleeps before each timed call: OpenMP's idle team threads spin for a
few milliseconds after a call, then sleep, and a call that finds them asleep waits for
them to wake (see docs/guide/threads.md); back to back (the default) they are awake.

``--cases FILE`` runs the cases that FILE defines: it is executed with ``np``, ``rng``
(a seeded Generator), ``nt`` (the thread count) and an empty dict ``cases`` in scope, and
adds ``name: lambda fr: fr.<function>(...)`` entries to it.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import time

import numpy as np

DEFAULT_CASES = """
x = rng.standard_normal((8, 21, 256, 256), dtype=np.float32)
t = rng.integers(0, 21, (8, 256, 256)); g = np.empty_like(x)
cases['seg_grad'] = lambda fr: fr.cross_entropy_with_grad(x, t, axis=1, out=g, num_threads=nt)
cases['seg_loss'] = lambda fr: fr.cross_entropy(x, t, axis=1, num_threads=nt)
b = rng.standard_normal((1000, 4096), dtype=np.float32); ob = np.empty_like(b)
cases['softmax_axis0'] = lambda fr: fr.softmax(b, axis=0, out=ob, num_threads=nt)
s = rng.standard_normal((65536, 10), dtype=np.float32); st = rng.integers(0, 10, 65536)
gs = np.empty_like(s)
cases['65536x10_loss'] = lambda fr: fr.cross_entropy(s, st, num_threads=nt)
cases['65536x10_grad'] = lambda fr: fr.cross_entropy_with_grad(s, st, out=gs, num_threads=nt)
"""

SUFFIX = {"avx512": "_avx512", "avx2": "_avx2", "baseline": ""}


def load_frontend(build, cpu):
    """A Frontend over the kernel module of ``cpu`` in the build directory ``build``."""
    from csoftmax import _dispatch
    from csoftmax._api import Frontend

    return Frontend(_load_module(build, cpu), f"cython-{cpu}-{build}",
                    restore=_dispatch.restore_frontend)


def load_public(build, cpu):
    """The kernel module of ``cpu`` in ``build`` with its public functions
    (``module.cross_entropy`` ...: the C fast path, else the method) bound to a
    Frontend over that same module: what ``csoftmax.cross_entropy`` runs."""
    frontend = load_frontend(build, cpu)
    frontend.kernels.bind_public(frontend)
    return frontend.kernels


def _load_module(build, cpu):
    name = f"_kernels{SUFFIX[cpu]}"
    found = glob.glob(os.path.join(build, "csoftmax", f"{name}.*.so"))
    found += glob.glob(os.path.join(build, "csoftmax", f"{name}.*.pyd"))
    if not found:
        raise SystemExit(f"no {name} module in {build}/csoftmax")
    # not entered in sys.modules: each build's module is its own shared object
    spec = importlib.util.spec_from_file_location(f"csoftmax.{name}", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", help="directories holding a built csoftmax/")
    parser.add_argument("--cpu", choices=sorted(SUFFIX), default="avx2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--cases", help="a Python file that fills `cases` (see above)")
    parser.add_argument("--public", action="store_true",
                        help="time the builds' public functions (their C fast path where it "
                             "answers): each case's `fr` is then the kernel module")
    parser.add_argument("--gap", type=float, default=0.0, metavar="SECONDS",
                        help="sleep this long before each timed call, so that the OpenMP "
                             "team's idle threads have gone to sleep as between a program's "
                             "calls (0: back to back, the team awake)")
    args = parser.parse_args(argv)
    # a build given twice (a control: the noise of the measure) is timed twice
    labels = [b if args.builds.count(b) == 1 else f"{b}#{i}" for i, b in enumerate(args.builds)]
    load = load_public if args.public else load_frontend
    fronts = {label: load(b, args.cpu) for label, b in zip(labels, args.builds)}
    cases = {}
    scope = {"np": np, "rng": np.random.default_rng(0), "nt": args.threads, "cases": cases}
    source = DEFAULT_CASES if args.cases is None else open(args.cases).read()
    exec(source, scope)
    times = {(c, b): [] for c in cases for b in fronts}
    order = list(fronts.items())
    for r in range(args.reps):
        for c, call in cases.items():
            for b, fr in (order if r % 2 == 0 else order[::-1]):
                if args.gap > 0:
                    time.sleep(args.gap)
                t0 = time.perf_counter()
                call(fr)
                times[(c, b)].append(time.perf_counter() - t0)
    first = labels[0]
    print(f"SIMD path {args.cpu}, {args.threads} thread(s), {args.reps} rounds"
          f"{', public functions' if args.public else ''}"
          f"{f', {args.gap * 1e3:g} ms asleep before each call' if args.gap > 0 else ''}; "
          f"times in ms, ratio: median of the per-round time over {first}'s")
    for c in cases:
        cells = []
        for b in fronts:
            v = np.sort(times[(c, b)]) * 1e3
            ratio = np.median(np.array(times[(c, b)]) / np.array(times[(c, first)]))
            cells.append(f"{b}: min {v[0]:.3f} q25 {v[len(v) // 4]:.3f} ratio {ratio:.3f}")
        print(f"{c:16s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
