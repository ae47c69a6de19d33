"""Machine information, the Markdown table and the JSON file (the plots: :mod:`bench.plots`)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import platform
import re
import sys
from pathlib import Path

#: CPU flags worth recording (the SIMD levels the kernels may use).
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq",
              "avx512vl", "avx512_bf16", "asimd", "sve")


def cpu_info():
    """Describe the CPU from ``/proc/cpuinfo`` (where it exists).

    Returns
    -------
    dict
        ``model``, ``cache``, SIMD ``flags``, logical ``cpu_count`` and the
        ``affinity`` (usable cores).
    """
    info = {"model": platform.processor() or platform.machine(), "cache": None,
            "flags": [], "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else None}
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        fields = dict(re.findall(r"^(model name|cache size|flags)\s*:\s*(.*)$", text, re.M))
        info["model"] = fields.get("model name", info["model"])
        info["cache"] = fields.get("cache size")
        flags = set(fields.get("flags", "").split())
        info["flags"] = [f for f in SIMD_FLAGS if f in flags]
    return info


def usable_cores():
    """Return the number of cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def csoftmax_info(module):
    """Describe the csoftmax build, defensively (every field is optional).

    Parameters
    ----------
    module : module
        The imported csoftmax.

    Returns
    -------
    dict
        ``version``, ``backend``, ``num_threads``, ``simd`` (the SIMD path, from
        ``config()`` where the package has it, else from an attribute or from
        the text of ``show_config()``), ``config`` and that text.
    """
    info = {"version": getattr(module, "__version__", None),
            "backend": getattr(module, "BACKEND", None), "file": getattr(module, "__file__", None)}
    get_threads = getattr(module, "get_num_threads", None)
    info["num_threads"] = get_threads() if callable(get_threads) else None
    config = getattr(module, "config", None)
    with contextlib.suppress(Exception):
        config = config() if callable(config) else config
        if isinstance(config, dict):
            info["config"] = config
            if config.get("simd") is not None:
                info["simd"] = str(config["simd"])
    for attr in ("SIMD", "SIMD_LEVEL", "simd", "simd_level", "get_simd", "get_simd_level"):
        value = getattr(module, attr, None)
        if value is not None and "simd" not in info:
            info["simd"] = str(value() if callable(value) else value)
    show = getattr(module, "show_config", None)
    if callable(show):
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                returned = show()
        except Exception as exc:  # noqa: BLE001 - informative only
            returned = f"show_config() failed: {type(exc).__name__}: {exc}"
        info["show_config"] = buffer.getvalue().strip()
        if returned is not None:
            info["show_config_returned"] = returned if isinstance(returned, (dict, str)) \
                else repr(returned)
        if "simd" not in info:
            match = re.search(r"^\s*simd\w*\s*[:=]?\s+(\S.*)$", info["show_config"],
                              re.I | re.M)
            info["simd"] = match.group(1).strip() if match else None
    return info


#: ``CSOFTMAX_CPU`` path -> PyTorch's ``ATEN_CPU_CAPABILITY`` of the same instruction set.
ATEN_CAPABILITY = {"baseline": "default", "avx2": "avx2", "avx512": "avx512"}


def simd_info(csoftmax_module):
    """Return the SIMD paths in use: csoftmax's and, if imported, PyTorch's.

    Parameters
    ----------
    csoftmax_module : module

    Returns
    -------
    dict
        ``csoftmax`` (``csoftmax._dispatch.CPU_PATH``: ``baseline``, ``avx2``,
        ``avx512``, or None for the NumPy backend), ``available`` (the compiled
        paths this CPU runs), ``torch`` (``torch.backends.cpu.get_cpu_capability()``
        or None) and the forcing variables ``CSOFTMAX_CPU`` and
        ``ATEN_CPU_CAPABILITY`` (None when unset).
    """
    info = {"csoftmax": None, "available": None, "torch": None}
    with contextlib.suppress(Exception):
        dispatch = importlib.import_module(f"{csoftmax_module.__name__}._dispatch")
        info["csoftmax"] = dispatch.CPU_PATH
        info["available"] = dispatch.available_cpu_paths()
    torch = sys.modules.get("torch")
    if torch is not None:
        from .peers import cpu_capability

        info["torch"] = cpu_capability(torch)
    for var in ("CSOFTMAX_CPU", "ATEN_CPU_CAPABILITY"):
        info[var] = os.environ.get(var)
    return info


def simd_text(simd):
    """Describe :func:`simd_info`'s dict in one line."""
    forced = [f"{var}={simd[var]}" for var in ("CSOFTMAX_CPU", "ATEN_CPU_CAPABILITY")
              if simd.get(var)]
    text = f"csoftmax {simd.get('csoftmax') or 'NumPy backend'}"
    if simd.get("torch"):
        text += f", PyTorch {simd['torch']}"
    return text + (f" (forced: {', '.join(forced)})" if forced else "")


def machine_info(peers, csoftmax_module):
    """Collect everything that qualifies the numbers.

    Parameters
    ----------
    peers : list of bench.peers.Peer
        Every peer (loaded or skipped).
    csoftmax_module : module

    Returns
    -------
    dict
    """
    import numpy as np

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for peer in peers:
        if peer.version is not None:
            versions[peer.module.split(".")[0]] = peer.version
    threads = {"usable_cores": usable_cores(),
               "env": {k: v for k, v in os.environ.items()
                       if k in {"OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_WAIT_POLICY",
                                "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                "CSOFTMAX_BACKEND", "CSOFTMAX_CPU",
                                "ATEN_CPU_CAPABILITY"}}}
    for peer in peers:
        with contextlib.suppress(Exception):
            if peer.info():
                threads[peer.name] = peer.info()
    with contextlib.suppress(Exception):
        import threadpoolctl

        versions["threadpoolctl"] = threadpoolctl.__version__
        threads["threadpool_info"] = threadpoolctl.threadpool_info()
    return {"platform": platform.platform(), "cpu": cpu_info(), "versions": versions,
            "threads": threads, "csoftmax": csoftmax_info(csoftmax_module),
            "simd_path": simd_info(csoftmax_module)}


def machine_lines(info):
    """Return the Markdown list items that describe the machine and the builds."""
    cs, cpu = info["csoftmax"], info["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return [
        f"- CPU: {cpu['model']} ({info['threads']['usable_cores']} usable cores, "
        f"cache {cpu['cache']}, flags {' '.join(cpu['flags']) or 'n/a'})",
        f"- csoftmax {cs['version']}: backend {cs['backend']}, SIMD {cs.get('simd')}, "
        f"default threads {cs['num_threads']}",
        f"- SIMD path: {simd_text(info['simd_path'])}",
        f"- versions: {versions}",
    ]


def header_lines(info, skipped, settings):
    """Return the Markdown lines that describe the run, before the table."""
    lines = [
        "## csoftmax benchmark",
        "",
        *machine_lines(info),
        f"- timing: interleaved, {settings.budget:g} s per case, >= {settings.min_rounds} "
        f"rounds, samples >= {settings.min_sample * 1e3:g} ms; time = "
        + ("median of the samples not slowed by contention (thread CPU/wall >= 90% of "
           "the best)" if settings.stat == "median" else "minimum of the samples")
        + "; csoftmax's spread = IQR/median",
        "- cells: time per call (peer time / csoftmax time; > 1 means csoftmax is "
        "faster); `cs/copy` = csoftmax `out=` (else csoftmax) / np.copyto of the logits",
        "- PyTorch and scikit-learn run at the case's thread count; NumPy twin, SciPy "
        "and np.copyto on one thread; PyTorch cross_entropy_with_grad = forward + "
        "autograd backward, cross_entropy = loss only under torch.no_grad() (entered "
        "once per timed batch)",
    ]
    lines += [f"- skipped: {name} ({why})" for name, why in skipped.items()]
    return [*lines, ""]


def format_time(seconds):
    """Format seconds with 3 significant digits and a unit (ns to s)."""
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


class Table:
    """The Markdown results table, printed row by row as cases finish.

    Parameters
    ----------
    peers : list of bench.peers.Peer
        The available peers, csoftmax first.
    stream : file, optional
        Default: ``sys.stdout`` at the time of printing (so that :class:`Tee` sees it).
    """

    def __init__(self, peers, stream=None):
        self.peers = peers
        self.stream = stream

    def header(self):
        """Print the column headers."""
        cols = ["op", "shape", "dtype", "thr"] + [p.label for p in self.peers] + ["cs/copy"]
        self._print(cols)
        self._print(["---"] * 4 + ["---:"] * (len(cols) - 4))

    def row(self, result):
        """Print the row of one case result (see :func:`bench.runner.run_case`)."""
        res = result["results"]
        base = res.get("csoftmax", {}).get("time")
        cells = [result["op"], "x".join(map(str, result["shape"])), result["dtype"],
                 str(result["threads"])]
        for peer in self.peers:
            cells.append(self._cell(res.get(peer.name), base, peer.name == "csoftmax"))
        cells.append(_ratio_text(copy_ratio(result)))
        self._print(cells)

    @staticmethod
    def _cell(entry, base, is_base):
        if entry is None:
            return "—"
        if entry["status"] == "error":
            return "**ERROR**"
        text = format_time(entry.get("time"))
        if is_base and entry.get("time"):
            text += f" ±{100 * (entry['q3'] - entry['q1']) / entry['median']:.0f}%"
        elif base and entry.get("time"):
            text += f" ({entry['time'] / base:.2f}x)"
        if entry["status"] == "mismatch":
            text = f"**MISMATCH** {text}"
        return text

    def _print(self, cells):
        print("| " + " | ".join(cells) + " |", file=self.stream or sys.stdout, flush=True)


def larger_floor(units, copies, exp_floor):
    """``(time, what)`` of the larger of a call's floors, or None without either: the
    memory floor, ``units`` logits-sized arrays moved times the fastest of the ``copies``
    timed (np.copyto, a copy on the case's threads; None where not timed), and the exp
    floor (its time, or None). The one rule of the bound notes of :mod:`bench.targets`
    and :mod:`bench.parity`."""
    floors = []
    copies = [t for t in copies if t]
    if units and copies:
        floors.append((units * min(copies), f"memory floor ({units:g}x a copy)"))
    if exp_floor:
        floors.append((exp_floor, "exp floor"))
    return max(floors) if floors else None


def copy_ratio(result):
    """Return csoftmax time (``out=`` variant if timed) over np.copyto time, or None."""
    res = result["results"]
    copy = res.get("copyto", {}).get("time")
    own = res.get("csoftmax_out", {}).get("time") or res.get("csoftmax", {}).get("time")
    return own / copy if own and copy else None


def _ratio_text(value):
    return "—" if value is None else f"{value:.2f}"


def problems(results):
    """List the mismatches and errors of a run, one line each."""
    lines = []
    for result in results:
        label = (f"{result['op']} {'x'.join(map(str, result['shape']))} "
                 f"{result['dtype']} t={result['threads']}")
        lines += [f"{label}: {name}: {entry['status'].upper()}: {entry['message']}"
                  for name, entry in result["results"].items()
                  if entry["status"] in {"mismatch", "error"}]
        lines += [f"{label}: {note}" for note in result["notes"]]
    return lines


def write_json(path, payload):
    """Write the results as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


class Tee:
    """Copy what is printed to ``sys.stdout`` into a file, while in the ``with`` block.

    Parameters
    ----------
    path : str or pathlib.Path
        The file (its folder is created).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file = self._stdout = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed on exit
        self._stdout, sys.stdout = sys.stdout, self
        return self

    def write(self, text):
        self._file.write(text)
        return self._stdout.write(text)

    def flush(self):
        self._file.flush()
        self._stdout.flush()

    def __getattr__(self, name):  # encoding, isatty, fileno...: the terminal's
        return getattr(self._stdout, name)

    def __exit__(self, *exc):
        sys.stdout = self._stdout
        self._file.close()
        return False
