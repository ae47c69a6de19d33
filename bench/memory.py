"""Peak memory of one call, measured in a fresh process.

``python -m bench`` runs, for every ``linear_cross_entropy`` case, each peer once
more in a child process (``python -m bench.memory OP SHAPE DTYPE PEER THREADS SEED``)
that builds the inputs, calls the peer once to warm up (imports, thread pools, BLAS
buffers), frees everything that call returned, resets the kernel's resident-set
high-water mark (``/proc/self/clear_refs``), and calls it again.  Reported:

* ``peak_mib``: the resident-set high-water mark of that call minus the resident set
  before it -- every byte the call touched at once, NumPy's, the BLAS's and PyTorch's
  allocator alike;
* ``results_mib``: the arrays/tensors it returned (the loss and gradients);
* ``extra_mib``: ``peak_mib - results_mib``, the memory beyond the inputs and the
  results (the issue's measure: chunk buffers, logits, temporaries).

glibc's malloc is told to serve every block of 64 KiB or more by ``mmap``
(``MALLOC_MMAP_THRESHOLD_``), so that the warm-up's freed buffers go back to the system
instead of being reused unseen.  Off Linux (no ``/proc``) the measure falls back to
``tracemalloc`` (NumPy's allocations only; PyTorch's are not seen) and says so.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys

import numpy as np

MIB = float(1 << 20)
#: the peers whose memory is measured for linear cross-entropy cases
LINEAR_PEERS = ["csoftmax", "csoftmax_loss", "torch", "torch_chunked", "torch_loss"]


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak():
    """Reset the resident-set high-water mark; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _result_bytes(result):
    items = result if isinstance(result, (tuple, list)) else (result,)
    total = 0
    for r in items:
        if isinstance(r, np.ndarray):
            total += r.nbytes
        elif hasattr(r, "element_size") and hasattr(r, "numel"):  # a torch.Tensor
            total += r.element_size() * r.numel()
    return total


def measure_here(op_name, shape, dtype, peer_name, threads, seed=0):
    """Measure in this process (the child's job; see the module docstring).

    Returns
    -------
    dict
        ``peak_mib``, ``results_mib``, ``extra_mib``, ``method`` ("rss" or
        "tracemalloc"), or ``error``.
    """
    from .ops import OPS, make_inputs
    from .peers import all_peers

    op = OPS[op_name]
    peer = next(p for p in all_peers() if p.name == peer_name)
    why = peer.load()
    if why is not None:
        return {"error": why}
    inputs = make_inputs(op, tuple(shape), np.dtype(dtype), seed)
    prepared = peer.prepare(op, inputs, threads)
    if prepared is None:
        return {"error": "no equivalent"}
    r = _call(prepared)  # the warm-up: imports, thread pools, BLAS buffers
    del r, prepared
    gc.collect()
    prepared = peer.prepare(op, inputs, threads)
    gc.collect()
    if os.path.exists("/proc/self/status") and _reset_peak():
        before = _status("VmRSS")
        r = _call(prepared)
        peak = _status("VmHWM") - before
        method = "rss"
    else:  # pragma: no cover - off Linux
        import tracemalloc

        tracemalloc.start()
        r = _call(prepared)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        method = "tracemalloc (NumPy allocations only)"
    results = _result_bytes(r)
    return {"peak_mib": round(peak / MIB, 1), "results_mib": round(results / MIB, 1),
            "extra_mib": round(max(0, peak - results) / MIB, 1), "method": method}


def _call(prepared):
    with prepared.context() if prepared.context else contextlib.nullcontext():
        return prepared.call()


def measure(op_name, shape, dtype, peer_name, threads, seed=0, timeout=1800):
    """Measure one peer on one case in a fresh ``python -m bench.memory`` process.

    Returns
    -------
    dict
        As :func:`measure_here`, or ``error`` when the child failed.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "bench.memory", op_name, "x".join(map(str, shape)),
           str(dtype), peer_name, str(threads), str(seed)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=root)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def linear_memory(results, peers, seed=0, stream=sys.stderr):
    """Measure the memory of every linear cross-entropy case of ``results`` (as
    :func:`bench.runner.run_plan` returns them) for :data:`LINEAR_PEERS` that ran.

    Returns
    -------
    list of dict
        One per case: op, shape, dtype, threads, logits_mib and per peer the measure.
    """
    from .ops import OPS

    rows = []
    names = [p.name for p in peers if p.name in LINEAR_PEERS]
    for result in results:
        if not OPS[result["op"]].linear:
            continue
        n, _, v = result["shape"]
        row = {"op": result["op"], "shape": result["shape"], "dtype": result["dtype"],
               "threads": result["threads"],
               "logits_mib": round(n * v * np.dtype(result["dtype"]).itemsize / MIB, 1),
               "peers": {}}
        for name in names:
            print(f"memory: {result['op']} {'x'.join(map(str, result['shape']))} "
                  f"{result['dtype']} {name}", file=stream, flush=True)
            row["peers"][name] = measure(result["op"], result["shape"], result["dtype"], name,
                                         result["threads"], seed)
        rows.append(row)
    return rows


def table_lines(rows, labels):
    """The Markdown table of :func:`linear_memory`'s rows (MiB beyond the inputs and the
    returned results; the peak with them in parentheses)."""
    if not rows:
        return []
    names = list(dict.fromkeys(name for row in rows for name in row["peers"]))
    lines = ["### Peak memory beyond the inputs and the returned results, MiB "
             "(peak of the call in parentheses; each in a fresh process)", "",
             "| op | shape | dtype | thr | N×V logits | "
             + " | ".join(labels.get(n, n) for n in names) + " |",
             "| --- | --- | --- | --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for row in rows:
        cells = []
        for name in names:
            m = row["peers"].get(name, {})
            cells.append(f"{m['extra_mib']:.0f} ({m['peak_mib']:.0f})" if "extra_mib" in m
                         else m.get("error", "—"))
        lines.append(f"| {row['op']} | {'x'.join(map(str, row['shape']))} | {row['dtype']} | "
                     f"{row['threads']} | {row['logits_mib']:.0f} | " + " | ".join(cells) + " |")
    methods = {m.get("method") for row in rows for m in row["peers"].values()} - {None}
    if methods - {"rss"}:
        lines.append(f"\nmeasured by: {', '.join(sorted(methods))}")
    return lines


if __name__ == "__main__":
    op_name, shape, dtype, peer_name, threads, seed = sys.argv[1:7]
    out = measure_here(op_name, tuple(int(s) for s in shape.split("x")), dtype, peer_name,
                       int(threads), int(seed))
    print(json.dumps(out))
