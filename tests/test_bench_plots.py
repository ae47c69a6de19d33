"""The pictures and tables of the bench results (``bench/plots.py``) and what ``python -m
bench`` says it wrote.

The plots are drawn from hand-made results of two SIMD paths whose ratios are known, so that
the tables can be checked value by value; the command line runs on a tiny case.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "bench" / "plots.py").exists():  # tests/ copied alone (wheel tests)
    pytest.skip("bench/ is not beside tests/", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from bench import plots  # noqa: E402


def _entry(seconds, status="ok"):
    return {"status": status, "time": seconds}


def _case(op, shape, threads, **times):
    return {"op": op, "shape": list(shape), "dtype": "float32", "threads": threads,
            "results": {name: _entry(t) for name, t in times.items()}}


def _run(path, cs_scale):
    """A run on ``path`` whose csoftmax times are ``cs_scale`` x the AVX-512 ones."""
    cases = [_case("softmax", (8192, 1000), 2, csoftmax=1e-3 * cs_scale, torch=3e-3,
                   copyto=2e-3, scipy=8e-3),
             _case("cross_entropy_with_grad", (8192, 1000), 2, csoftmax=2e-3 * cs_scale,
                   csoftmax_out=1.5e-3 * cs_scale, torch=8e-3, copyto=2e-3, sklearn=2e-2),
             _case("cross_entropy_with_grad", (8192, 1000), 1, csoftmax=3.6e-3 * cs_scale),
             _case("cross_entropy", (1, 1000), 2, csoftmax=1e-6 * cs_scale, torch=3e-6),
             _case("softmax", (1, 262144), 2, csoftmax=5e-5 * cs_scale,
                   csoftmax_1thread=8e-5 * cs_scale)]
    return {"command": ["python", "-m", "bench", "--targets", "--json", f"x-{path}.json"],
            "parent_command": ["python", "-m", "bench", "--targets", "--cpu", "avx512,avx2"],
            "started": "2026-11-30T08:00:00+0000", "settings": {"stat": "min"},
            "machine": {"cpu": {"model": "Test CPU"}, "threads": {"usable_cores": 2},
                        "versions": {"numpy": "2.4", "torch": "2.13"},
                        "simd_path": {"csoftmax": path, "torch": path.upper()}},
            "cases": cases,
            "many_threads": [{"impl": "csoftmax.cross_entropy", "shape": [1, 1000],
                              "n_threads": 8, "ratio": 1.0}],
            "targets": [{"group": "softmax", "op": "softmax", "shape": [8192, 1000],
                         "criterion": ">= 1.3x faster than torch", "verdict":
                         "PASS" if cs_scale == 1 else "FAIL",
                         "by_dtype": {"float32": {"value": 3 / cs_scale,
                                                  "passed": 3 / cs_scale >= 1.3, "note": ""}}}]}


@pytest.fixture
def results(tmp_path):
    """targets-avx512.json and targets-avx2.json (csoftmax 2.5x slower on AVX2)."""
    for path, scale in (("avx512", 1.0), ("avx2", 2.5)):
        (tmp_path / f"targets-{path}.json").write_text(json.dumps(_run(path, scale)))
    return tmp_path


def test_ratios(results):
    avx512, avx2 = plots.load([results / "targets.json"])  # the --cpu files, AVX-512 first
    assert plots.simd_path(avx512) == "avx512" and plots.simd_path(avx2) == "avx2"
    assert plots.speedups(avx512, "torch") == pytest.approx(
        {("softmax", (8192, 1000)): 3.0, ("cross_entropy_with_grad", (8192, 1000)): 4.0,
         ("cross_entropy", (1, 1000)): 3.0})
    assert plots.speedups(avx2, "torch")[("softmax", (8192, 1000))] == pytest.approx(1.2)
    assert plots.scaling(avx512) == pytest.approx({("cross_entropy_with_grad",
                                                    (8192, 1000), 2): 1.8,
                                                   ("softmax", (1, 262144), 2): 1.6})
    assert plots.command(avx512) == "python -m bench --targets --cpu avx512,avx2"
    assert "Test CPU (2 usable cores); csoftmax AVX-512, PyTorch AVX512" in plots.caption(avx512)


def test_write_all(results, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    done = plots.write_all([results / "targets.json"], out)
    pngs = {"targets-avx512-speedup.png", "targets-avx2-speedup.png", "targets-avx512-floor.png",
            "targets-avx2-floor.png", "targets-avx512-threads.png", "targets-avx2-threads.png",
            "simd.png", "headline.png"}
    assert {name for name, value in done.items() if isinstance(value, Path)} >= pngs
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with open(out / "targets-avx2-cases.csv") as f:
        rows = list(csv.DictReader(f))
    softmax = next(r for r in rows if r["op"] == "softmax")
    assert float(softmax["csoftmax_s"]) == pytest.approx(2.5e-3)
    assert float(softmax["torch/csoftmax"]) == pytest.approx(1.2)
    with open(out / "targets.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["AVX-512"] == "3.00x ok" and row["AVX2"] == "1.20x FAIL"
    summary = (out / "summary.md").read_text()
    assert "`python -m bench --targets --cpu avx512,avx2`" in summary
    assert "| softmax | softmax | 8192x1000 | >= 1.3x faster than torch | 3.00x ok | 1.20x FAIL |" \
        in summary
    assert "{download}`CSV <../_static/perf/targets-avx2-cases.csv>`" in summary


def test_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no bench results"):
        plots.load([tmp_path / "targets.json"])
    assert plots.main([str(tmp_path / "targets.json"), str(tmp_path)]) == 2


def test_missing_json_stands_for_its_simd_paths(results):
    """``targets.json`` that ``--cpu`` split stands for ``targets-<path>.json`` of each SIMD
    path, not for other runs kept beside them (``targets-zen4-avx2.json``)."""
    (results / "targets-zen4-avx2.json").write_text(json.dumps(_run("avx2", 3.0)))
    runs = plots.load([results / "targets.json"])
    assert [r["_stem"] for r in runs] == ["targets-avx512", "targets-avx2"]
    assert [r["_stem"] for r in plots.load([results / "targets-zen4-avx2.json"])] == [
        "targets-zen4-avx2"]


def test_simd_figure_needs_both_paths(results, tmp_path):
    (run,) = plots.load([results / "targets-avx512.json"])
    assert "avx2" in plots.simd_figure([run], tmp_path / "simd.png")
    assert not (tmp_path / "simd.png").exists()


def test_bench_says_where_it_wrote(tmp_path):
    """``python -m bench`` names its table, JSON and plot, and writes the table it printed."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "quick.json"
    cmd = [sys.executable, "-m", "bench", "--quick", "--shapes", "4x16", "--ops", "softmax",
           "--peers", "copyto", "--budget", "0.02", "--json", str(out),
           "--plot", str(tmp_path / "quick.png")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"table: {tmp_path / 'quick.md'}" in proc.stderr
    assert f"JSON:  {out}" in proc.stderr
    assert "plot:  " in proc.stderr and f"python -m bench.plots {out}" in proc.stderr
    table = (tmp_path / "quick.md").read_text()
    assert table == proc.stdout and "| softmax | 4x16 | float32 |" in table
    assert json.loads(out.read_text())["parent_command"] is None


def test_quick_plan_gives_each_operation_its_shapes(capsys):
    """``--quick`` (NxC shapes) leaves out linear_cross_entropy, which takes NxDxV shapes,
    instead of failing on it; given an NxDxV shape it runs that alone."""
    from bench import cli

    parser = cli.build_parser()
    cases, *_ = cli._plan(parser.parse_args(["--quick"]), parser)
    ops = {c.op.name for c in cases}
    assert "linear_cross_entropy" not in ops and {"softmax", "cross_entropy"} <= ops
    assert all(len(c.shape) == 2 for c in cases)
    assert "linear_cross_entropy skipped" in capsys.readouterr().err
    args = parser.parse_args(["--ops", "softmax,linear_cross_entropy", "--shapes", "4x16,4x8x16"])
    cases, *_ = cli._plan(args, parser)
    assert sorted({(c.op.name, c.shape) for c in cases}) == [
        ("linear_cross_entropy", (4, 8, 16)), ("softmax", (4, 16))]
