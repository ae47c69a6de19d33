"""Smoke test of the benchmark suite (``python -m bench``).

It runs end to end on a tiny configuration and writes the JSON it promises;
no timing is asserted. The new inference pieces run too: ``--cpu`` (a forced
kernel set in a subprocess), ``--many-threads`` and the evaluation of the
relative and many-threads targets; ``--parity`` on tiny shapes (the PyTorch
parity cases: checks, interleaved timing, verdicts, a MISMATCH failing them).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import csoftmax

ROOT = Path(__file__).resolve().parents[1]


def test_bench_cli_writes_json(tmp_path):
    """Run the CLI on 4x16 with two ops and check the JSON's keys and checks."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--quick", "--shapes", "4x16",
           "--ops", "softmax,cross_entropy_with_grad", "--budget", "0.05",
           "--json", str(out), "--plot", str(tmp_path / "bench.png")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| op | shape | dtype | thr | csoftmax |" in proc.stdout

    data = json.loads(out.read_text())
    assert {"schema", "settings", "machine", "peers", "skipped", "cases",
            "problems"} <= data.keys()
    assert {"cpu", "versions", "threads", "csoftmax"} <= data["machine"].keys()
    assert data["machine"]["csoftmax"]["version"]
    assert data["problems"] == []
    assert [(c["op"], c["shape"], c["dtype"]) for c in data["cases"]] == [
        ("softmax", [4, 16], "float32"), ("cross_entropy_with_grad", [4, 16], "float32")]
    for case in data["cases"]:
        cs = case["results"]["csoftmax"]
        assert cs["status"] == "ok"
        assert {"time", "median", "min", "q1", "q3", "n", "number"} <= cs.keys()
        assert cs["time"] > 0
        assert "copyto" in case["results"]


def _bench_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _import_bench():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import bench.cli

    return bench.cli


def test_bench_cpu_baseline_subprocess(tmp_path):
    """``--cpu baseline`` re-runs one small case on the forced baseline kernels."""
    import csoftmax._dispatch as dispatch

    if "baseline" not in dispatch.available_cpu_paths():
        pytest.skip("no compiled baseline kernels")
    out = tmp_path / "cpu.json"
    cmd = [sys.executable, "-m", "bench", "--cpu", "baseline", "--ops", "cross_entropy",
           "--shapes", "4x16", "--dtypes", "f32", "--threads", "1", "--budget", "0.02",
           "--json", str(out), "--plot", str(tmp_path / "cpu.png")]
    proc = subprocess.run(cmd, cwd=ROOT, env=_bench_env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# SIMD path baseline (CSOFTMAX_CPU=baseline, ATEN_CPU_CAPABILITY=default)" \
        in proc.stdout
    assert "- SIMD path: csoftmax baseline" in proc.stdout
    data = json.loads((tmp_path / "cpu-baseline.json").read_text())
    simd = data["machine"]["simd_path"]
    assert simd["csoftmax"] == "baseline"
    assert simd["CSOFTMAX_CPU"] == "baseline"
    assert simd["ATEN_CPU_CAPABILITY"] == "default"
    if "torch" in data["peers"]:
        assert simd["torch"] == "DEFAULT"
        assert data["cases"][0]["results"]["torch"]["status"] == "ok"
    assert data["cases"][0]["results"]["csoftmax"]["status"] == "ok"


def test_bench_cpu_skips_unsupported_path(monkeypatch, capsys):
    """A path the CPU lacks is reported and skipped, no subprocess started."""
    cli = _import_bench()
    import csoftmax._dispatch as dispatch

    monkeypatch.setattr(dispatch, "available_cpu_paths", lambda: ["baseline"])
    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: pytest.fail("ran"))
    assert cli.main(["--cpu", "avx512", "--quick"]) == 0
    assert "SIMD path avx512: skipped, not supported" in capsys.readouterr().out


def test_bench_many_threads_cli(tmp_path, capsys):
    """``--many-threads 2`` on a tiny shape and budget: a table and its JSON."""
    cli = _import_bench()
    out = tmp_path / "mt.json"
    assert cli.main(["--many-threads", "2", "--shapes", "2x16", "--budget", "0.03",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| csoftmax.cross_entropy | 2x16 | float32 |" in text
    assert "- SIMD path: csoftmax" in text
    data = json.loads(out.read_text())
    rows = {r["impl"]: r for r in data["many_threads"]}
    assert rows["csoftmax.cross_entropy"]["status"] == "ok"
    assert rows["csoftmax.cross_entropy"]["ratio"] > 0
    assert rows["csoftmax.softmax"]["n_threads"] == 2
    control = rows["python sum(range(100))"]  # the interpreter's own ratio, nothing to check
    assert control["status"] == "ok" and control["ratio"] > 0
    if "torch.cross_entropy" not in data["skipped"]:
        assert rows["torch.cross_entropy"]["status"] == "ok"


def test_bench_targets_evaluate_new_kinds():
    """The relative (loss+grad vs loss only) and many-threads targets read their results."""
    _import_bench()
    from bench import targets

    def case(op, shape, times):
        return {"op": op, "shape": list(shape), "dtype": "float32", "threads": 2,
                "results": {name: {"status": "ok", "time": t} for name, t in times.items()}}

    results = [case(targets.CE, (1, 10), {"csoftmax": 3.0, "csoftmax_loss": 2.5,
                                          "torch": 30.0})]
    threads = [{"impl": "csoftmax.cross_entropy", "shape": [1, 1000], "dtype": "float32",
                "status": "ok", "ratio": 0.95},
               {"impl": "torch.cross_entropy", "shape": [1, 1000], "dtype": "float32",
                "status": "ok", "ratio": 0.5}]
    rows = targets.evaluate_all(results, ["float32"], 2, threads)
    relative = next(r for r in rows if r["op"] == targets.CE and r["shape"] == [1, 10]
                    and "cross_entropy time" in r["criterion"])
    assert relative["by_dtype"]["float32"]["value"] == 3.0 / 2.5
    assert relative["verdict"] == "PASS"
    many = next(r for r in rows if r["group"] == "many threads" and r["shape"] == [1, 1000])
    assert many["verdict"] == "PASS"
    assert "torch.cross_entropy 0.50x" in many["by_dtype"]["float32"]["note"]
    unmeasured = next(r for r in rows if r["group"] == "many threads"
                      and r["shape"] == [256, 1000])
    assert unmeasured["verdict"] == "n/a"


def test_bench_scaling_targets_read_one_case():
    """A "scaling" target divides the 1-thread call of its 2-thread case by the case's
    csoftmax time (the two interleaved); the peer is prepared there alone."""
    _import_bench()
    from bench import ops, peers, targets

    def case(op, shape, threads, times):
        return {"op": op, "shape": list(shape), "dtype": "float32", "threads": threads,
                "results": {name: {"status": "ok", "time": t} for name, t in times.items()}}

    def scaling_row(rows, op):
        return next(r for r in rows if r["op"] == op and r["shape"] == [1, 262144]
                    and r["criterion"].startswith("2 threads"))

    # a 1-thread case (as older runs timed) is not read
    results = [case("softmax", (1, 262144), 2, {"csoftmax": 2.0, "csoftmax_1thread": 3.6}),
               case("softmax", (1, 262144), 1, {"csoftmax": 2.0}),
               case(targets.CE, (1, 262144), 2, {"csoftmax": 2.0, "csoftmax_1thread": 2.8})]
    rows = targets.evaluate_all(results, ["float32"], 2, [])
    assert scaling_row(rows, "softmax")["by_dtype"]["float32"]["value"] == 1.8
    assert scaling_row(rows, "softmax")["verdict"] == "PASS"
    assert scaling_row(rows, targets.CE)["by_dtype"]["float32"]["value"] == 1.4
    assert scaling_row(rows, targets.CE)["verdict"] == "FAIL"
    lone = targets.evaluate_all([case("softmax", (1, 262144), 2, {"csoftmax": 2.0})],
                                ["float32"], 2, [])
    assert scaling_row(lone, "softmax")["by_dtype"]["float32"]["note"] == (
        "csoftmax_1thread not timed")
    assert scaling_row(targets.evaluate_all([], ["float32"], 2, []), "softmax")[
        "by_dtype"]["float32"]["note"] == "needs 2 usable cores"
    wrong = case("softmax", (1, 262144), 2, {"csoftmax": 2.0, "csoftmax_1thread": 3.6})
    wrong["results"]["csoftmax_1thread"]["status"] = "mismatch"
    failed = scaling_row(targets.evaluate_all([wrong], ["float32"], 2, []), "softmax")
    assert failed["verdict"] == "FAIL"
    assert failed["by_dtype"]["float32"]["note"] == "csoftmax_1thread mismatch"
    plan = {(c.op.name, c.shape, c.threads) for c in targets.plan(["float32"], 2)}
    assert ("softmax", (1, 262144), 2) in plan and ("softmax", (1, 262144), 1) not in plan
    # the peer: the scaling cases at 2 threads, one thread in its call, checked
    peer = next(p for p in peers.all_peers() if p.name == "csoftmax_1thread")
    assert peer.load() is None and not peer.threaded
    softmax = ops.OPS["softmax"]
    x = np.random.default_rng(0).standard_normal((1, 262144)).astype(np.float32)
    assert peer.prepare(softmax, {"x": x}, 1) is None
    assert peer.prepare(softmax, {"x": x}, 4) is None
    assert peer.prepare(softmax, {"x": x[:, :1000]}, 2) is None
    prepared = peer.prepare(softmax, {"x": x}, 2)
    assert prepared.verify and prepared.own
    np.testing.assert_array_equal(prepared.call(), csoftmax.softmax(x))
    calls = []
    peer._mod = SimpleNamespace(softmax=lambda *args, **kwargs: calls.append(kwargs))
    peer.prepare(softmax, {"x": x}, 2).call()
    assert calls == [{"num_threads": 1}]



def test_bench_exp_floor_bounds_failed_faster_targets():
    """A failed "faster" target notes the peer's time over the exp floor's."""
    _import_bench()
    from bench import targets

    times = {"csoftmax": 2.0, "torch": 6.0, "exp_floor": 1.5}
    results = [{"op": "cross_entropy", "shape": [65536, 10], "dtype": "float32",
                "threads": 2, "results": {name: {"status": "ok", "time": t}
                                          for name, t in times.items()}}]
    rows = targets.evaluate_all(results, ["float32"], 2)
    row = next(r for r in rows if r["op"] == "cross_entropy" and r["shape"] == [65536, 10]
               and r["criterion"] == ">= 5x faster than torch")
    assert row["verdict"] == "FAIL"
    # 6 / 1.5 = 4x: even at the exp floor the call would miss 5x
    assert row["by_dtype"]["float32"]["note"] == ("bound: torch / exp floor = 4.00x, "
                                                  "out of reach")
    passed = next(r for r in rows if r["op"] == "cross_entropy" and r["shape"] == [65536, 10]
                  and r["criterion"] == ">= 2x faster than sklearn")
    assert "bound" not in passed["by_dtype"]["float32"]["note"]
    results[0]["results"]["exp_floor"]["time"] = 1.0  # 6x at the floor: within reach
    rows = targets.evaluate_all(results, ["float32"], 2)
    row = next(r for r in rows if r["op"] == "cross_entropy" and r["shape"] == [65536, 10]
               and r["criterion"] == ">= 5x faster than torch")
    assert row["by_dtype"]["float32"]["note"] == "bound: torch / exp floor = 6.00x"


def test_bench_floor_target_notes_its_bound():
    """A failed ``<= k x np.copyto`` target notes its floor over np.copyto's time: the
    larger of the exp floor and the memory floor (the faster copy, times the arrays the
    call moves); the summary's cell carries the note."""
    _import_bench()
    from bench import plots, targets

    times = {"csoftmax": 3.0, "csoftmax_out": 2.0, "copyto": 1.0, "copy_floor": 0.8,
             "exp_floor": 0.5}
    results = [{"op": "cross_entropy_with_grad", "shape": [8192, 1000], "dtype": "float32",
                "threads": 2, "results": {name: {"status": "ok", "time": t}
                                          for name, t in times.items()}}]
    rows = targets.evaluate_all(results, ["float32"], 2)
    row = next(r for r in rows if r["op"] == "cross_entropy_with_grad"
               and r["shape"] == [8192, 1000] and r["criterion"].startswith("<= 1.3x"))
    assert row["verdict"] == "FAIL"
    assert row["by_dtype"]["float32"]["note"] == ("bound: memory floor (1x a copy) / "
                                                  "np.copyto = 0.80x")
    assert plots._target_cell(row) == ("2.00x FAIL (bound: memory floor (1x a copy) / "
                                       "np.copyto = 0.80x)")
    results[0]["results"]["exp_floor"]["time"] = 1.5
    rows = targets.evaluate_all(results, ["float32"], 2)
    row = next(r for r in rows if r["op"] == "cross_entropy_with_grad"
               and r["shape"] == [8192, 1000] and r["criterion"].startswith("<= 1.3x"))
    assert row["by_dtype"]["float32"]["note"] == ("bound: exp floor / np.copyto = 1.50x, "
                                                  "out of reach")


def test_bench_parity_floor_bound():
    """A failed parity criterion with a ``floor_of`` call notes its value at that call's
    floor (bench.parity.floor_bound), whichever side of the ratio the call is on."""
    _import_bench()
    from bench import parity

    def judged(criterion, times):
        spec = parity.Spec("k", "group", "op", (4, 4), None, (criterion,))
        result = {"status": "ok", "calls": {n: {"status": "ok", "time": t}
                                           for n, t in times.items()}}
        return parity.judge(spec, result)[0]

    faster = parity.Criterion("f32", "own_f32", "own", 1.7, True, "text", floor_of="own")
    times = {"own": 2.0, "own_f32": 3.0, "copyto": 1.4, "copy_threads": 1.0,
             "exp_floor": 1.2}
    row = judged(faster, times)  # 3 / max(1.0, 1.2)
    assert row["passed"] is False
    assert row["note"] == "bound: 2.50x at the exp floor"
    times["exp_floor"] = 2.0
    assert judged(faster, times)["note"] == "bound: 1.50x at the exp floor, out of reach"
    at_most = parity.Criterion("copyto", "own", "copyto", 1.3, False, "text", floor_of="own",
                               units=1.5)
    times = {"own": 2.8, "copyto": 2.0, "copy_threads": 1.2}
    assert judged(at_most, times)["note"] == "bound: 0.90x at the memory floor (1.5x a copy)"
    assert judged(at_most, {"own": 1.0, "copyto": 2.0, "copy_threads": 1.2})["note"] == ""
    no_floor = parity.Criterion("copyto", "own", "copyto", 1.3, False, "text")
    assert "bound" not in judged(no_floor, times)["note"]


def test_bench_targets_judge_float32_and_show_float64():
    """The speed targets are float32's: a float64 case's ratio is shown without a verdict
    (a missed float64 ratio fails nothing), and a float64 result that csoftmax got wrong
    still fails."""
    _import_bench()
    from bench import targets

    def case(dtype, status="ok"):
        times = {"csoftmax": 2.0, "torch": 6.0, "exp_floor": 1.5}
        res = {name: {"status": "ok", "time": t} for name, t in times.items()}
        res["csoftmax"]["status"] = status
        return {"op": "cross_entropy", "shape": [65536, 10], "dtype": dtype, "threads": 2,
                "results": res}

    def row_of(rows):
        return next(r for r in rows if r["op"] == "cross_entropy" and r["shape"] == [65536, 10]
                    and r["criterion"] == ">= 5x faster than torch")

    row = row_of(targets.evaluate_all([case("float64")], ["float64"], 2))
    assert row["by_dtype"]["float64"]["value"] == 3.0
    assert row["by_dtype"]["float64"]["passed"] is None
    assert row["verdict"] == "n/a"
    row = row_of(targets.evaluate_all([case("float32"), case("float64")],
                                      ["float32", "float64"], 2))
    assert row["by_dtype"]["float32"]["passed"] is False
    assert row["verdict"] == "FAIL"
    row = row_of(targets.evaluate_all([case("float64", "mismatch")], ["float64"], 2))
    assert row["by_dtype"]["float64"]["passed"] is False
    assert row["verdict"] == "FAIL"


def test_bench_memory_floor_bounds_failed_faster_targets():
    """Where moving the call's arrays takes longer than the exp floor, the note
    names the memory floor: the faster copy times the logits-sized arrays moved
    (probability targets with the gradient: x and y read, grad written, 1.5)."""
    _import_bench()
    from bench import targets
    from bench.ops import OPS

    assert OPS["cross_entropy"].memory_units == 0.5
    assert OPS["cross_entropy_with_grad"].memory_units == 1.0
    assert OPS["softmax"].memory_units == 1.0
    assert OPS["linear_cross_entropy"].memory_units is None
    times = {"csoftmax": 6.9, "torch": 22.5, "exp_floor": 2.5, "copyto": 4.8,
             "copy_floor": 4.0}
    results = [{"op": "cross_entropy_with_grad_prob", "shape": [8192, 1000],
                "dtype": "float32", "threads": 2,
                "results": {name: {"status": "ok", "time": t} for name, t in times.items()}}]
    rows = targets.evaluate_all(results, ["float32"], 2)
    row = next(r for r in rows if r["op"] == "cross_entropy_with_grad_prob")
    assert row["verdict"] == "FAIL"
    assert row["by_dtype"]["float32"]["note"] == (
        "bound: torch / memory floor (1.5x a copy) = 3.75x, out of reach")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_copy_floor_kernel(dtype):
    """kernels.copy_floor copies x into out whatever the thread count."""
    import numpy as np

    from csoftmax import _dispatch

    if not hasattr(_dispatch.KERNELS, "copy_floor"):
        pytest.skip("compiled kernels absent (the NumPy fallback has no copy floor)")
    x = np.random.default_rng(0).standard_normal((301, 7)).astype(dtype)
    for threads in (1, 2, 3):
        out = np.zeros_like(x)
        _dispatch.KERNELS.copy_floor(x, out, threads)
        np.testing.assert_array_equal(out, x)
    _dispatch.KERNELS.copy_floor(x[:0], np.empty((0, 7), dtype), 2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_floor_kernel(dtype):
    """kernels.exp_floor: sum over blocks of 4096 of sum(exp(x - block max)), per thread part."""
    import numpy as np

    from csoftmax import _dispatch

    if not hasattr(_dispatch.KERNELS, "exp_floor"):
        pytest.skip("compiled kernels absent (the NumPy fallback has no exp floor)")
    x = np.random.default_rng(0).standard_normal((300, 50)).astype(dtype) * 4
    flat = x.ravel().astype(np.float64)

    def ref(parts):
        total = 0.0
        for part in np.array_split(flat, np.arange(1, parts) * -(-flat.size // parts)):
            for block in np.split(part, np.arange(4096, part.size, 4096)):
                total += np.exp(block - block.max()).sum()
        return total

    for threads in (1, 2, 3):
        assert _dispatch.KERNELS.exp_floor(x, threads) == pytest.approx(ref(threads), rel=1e-6)
    assert _dispatch.KERNELS.exp_floor(x[:0], 2) == 0.0

#: Tiny stand-ins of the parity cases' shapes (same ranks and class axes).
TINY_PARITY = {"ce_axis1": (2, 5, 8, 8), "ce_3d": (2, 8, 50), "softmax_axis1": (4, 30, 6),
               "softmax_axis0": (30, 40), "softmax_backward_axis1": (4, 30, 6),
               "softmax_backward_axis0": (30, 40), "masked_padding": (16, 64),
               "masked_random": (16, 64), "wide_logits": (32, 100), "extras_1000": (32, 100),
               "extras_32000": (8, 300)}


def test_bench_parity_cli_tiny(tmp_path, capsys, monkeypatch):
    """``--parity`` on tiny shapes and budget: every case checked, timed and judged."""
    pytest.importorskip("torch")
    cli = _import_bench()
    import dataclasses

    from bench import parity
    from csoftmax import _dispatch

    compiled = hasattr(_dispatch.KERNELS, "copy_floor")
    tiny = [dataclasses.replace(s, shape=TINY_PARITY[s.key]) for s in parity.SPECS]
    monkeypatch.setattr(parity, "SPECS", tiny)
    out = tmp_path / "parity.json"
    assert cli.main(["--parity", "--budget", "0.01", "--threads", "2",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## PyTorch parity: timings (SIMD path: csoftmax" in text
    assert "## performance targets (SIMD path: csoftmax" in text
    assert "`torch.masked.softmax(xt, -1, mask=mt)`" in text
    assert "MISMATCH" not in text
    data = json.loads(out.read_text())
    assert data["problems"] == []
    assert [r["key"] for r in data["parity"]] == list(TINY_PARITY)
    for result in data["parity"]:
        assert result["status"] == "ok", result["message"]
        assert result["shape"] == list(TINY_PARITY[result["key"]])
        for name, call in result["calls"].items():
            assert call["time"] > 0, name
            if name != "copyto" and name not in parity.FLOOR_CALLS:  # timed, not checked
                assert call["error"] <= 1e-4, name
        if compiled and any(c.floor_of for spec in parity.SPECS
                            if spec.key == result["key"] for c in spec.criteria):
            assert "copy_threads" in result["calls"], result["key"]
        for row in result["criteria"]:
            assert row["value"] > 0 and isinstance(row["passed"], bool), row
    assert len(data["targets"]) == sum(len(s.criteria) for s in tiny)
    assert all(r["verdict"] in {"PASS", "FAIL"} for r in data["targets"])


def test_bench_parity_mismatch_fails_its_criteria():
    """A call that disagrees with the reference is a MISMATCH and fails its criteria."""
    _import_bench()
    import dataclasses

    import numpy as np

    from bench import parity, targets

    spec = next(s for s in parity.SPECS if s.key == "ce_3d")

    def wrong(shape, threads, seed, torch):
        built = spec.build(shape, threads, seed, torch)
        good = built.calls["csoftmax_2d_out"]
        built.calls["csoftmax_2d_out"] = lambda: (lambda r: (r[0] + 1.0, r[1]))(good())
        return built

    bad = dataclasses.replace(spec, shape=(2, 4, 16), build=wrong)
    result = parity.measure(bad, 1, budget=0.0, min_rounds=1, min_sample=1e-5)
    assert result["status"] == "mismatch"
    assert result["calls"]["csoftmax_out"]["status"] == "ok"
    assert "MISMATCH" in result["calls"]["csoftmax_2d_out"]["status"].upper()
    (row,) = result["criteria"]
    assert row["passed"] is False and "MISMATCH" in row["note"]
    assert parity.problems([result])
    # the targets table reads the verdict; float64 has no parity row
    rows = targets.evaluate_all([], ["float32", "float64"], 1, parity_results=[result],
                                rows=targets.parity_rows([bad]))
    assert rows[0]["verdict"] == "FAIL"
    assert rows[0]["by_dtype"]["float64"]["note"] == "float32 only"
    assert "2-D" in rows[0]["criterion"]
    # the full targets list holds the parity rows (and the 16-bit cases', see bench.half)
    # and plans no case for them
    from bench import half

    assert sum(t.kind == "parity" for t in targets.TARGETS) == sum(
        len(s.criteria) for s in parity.SPECS + half.ALL_SPECS)
    assert all(c.op.name in targets.OPS for c in targets.plan(["float32"], 2))
    assert np.isfinite(result["calls"]["csoftmax_out"]["time"])


def test_bench_half_cli_tiny(tmp_path, capsys, monkeypatch):
    """``--dtypes bfloat16,float16`` on tiny shapes: every 16-bit case checked, timed and
    judged, and its target rows in the 16-bit dtype's column of the targets table."""
    pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    cli = _import_bench()
    import dataclasses

    from bench import half, parity, targets
    from csoftmax import _dispatch

    compiled = hasattr(_dispatch.KERNELS, "copy_floor")
    tiny = {name: [dataclasses.replace(s, shape=(8, 300)) for s in specs]
            for name, specs in half.SPECS.items()}
    monkeypatch.setattr(half, "SPECS", tiny)
    out = tmp_path / "half.json"
    assert cli.main(["--dtypes", "bfloat16,float16", "--budget", "0.01", "--threads", "2",
                     "--json", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    text = capsys.readouterr().out
    assert "## bfloat16 / float16: timings" in text
    assert "MISMATCH" not in text
    data = json.loads(out.read_text())
    assert data["problems"] == []
    assert [r["dtype"] for r in data["half"]] == ["bfloat16"] * 4 + ["float16"] * 3
    for result in data["half"]:
        assert result["status"] == "ok", result["message"]
        for name, call in result["calls"].items():
            assert call["time"] > 0, name
            if name != "copyto" and name not in parity.FLOOR_CALLS:  # timed, not checked
                assert call["error"] <= half.TOLERANCE[result["dtype"]], name
        if compiled:  # the floors are compiled kernels: none on the NumPy fallback
            assert set(parity.FLOOR_CALLS) <= set(result["calls"]), result["key"]
        for row in result["criteria"]:
            assert row["value"] > 0 and isinstance(row["passed"], bool), row
    # the targets table: a 16-bit row is judged in its own dtype's column only
    rows = targets.evaluate_all([], ["float32", "bfloat16", "float16"], 2,
                                parity_results=data["half"],
                                rows=targets.parity_rows(tiny["bfloat16"]))
    assert all(r["by_dtype"]["bfloat16"]["passed"] is not None for r in rows)
    assert all(r["by_dtype"]["float16"]["note"] == "bfloat16 only" for r in rows)


def test_bench_direct_call_passes_the_same_arguments():
    """The csoftmax peer's call written out (no unpacking) for the common argument lists
    gives the function exactly what func(*args, **kwargs) gives it; others are unpacked."""
    _import_bench()
    from bench import peers

    def record(*args, **kwargs):
        return args, kwargs

    out = object()
    for args in [(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]:
        for kwargs in [{"num_threads": 2}, {"num_threads": None, "out": out},
                       {"num_threads": 2, "weight": 5}, {"out": out}, {}]:
            assert peers.direct_call(record, args, kwargs)() == (args, kwargs)
