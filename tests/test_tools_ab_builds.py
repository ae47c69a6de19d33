"""tools/ab_builds.py: builds' kernel modules side by side in one process.

No timing is asserted: that each build's Frontend computes what the public
functions compute, and that the report has a line per case with every build.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import csoftmax

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "ab_builds.py"

if not TOOL.exists():  # tests/ copied alone (wheel tests)
    pytest.skip("tools/ab_builds.py is not beside the tests", allow_module_level=True)


def _tool():
    spec = importlib.util.spec_from_file_location("ab_builds", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_dir():
    """The directory whose csoftmax/ holds the compiled modules in use, or skip."""
    if csoftmax.BACKEND != "cython":
        pytest.skip("no compiled kernels in use")
    from csoftmax import _dispatch
    return str(Path(_dispatch.KERNELS.__file__).resolve().parents[1])


def test_frontend_of_a_build_matches_the_public_functions():
    tool = _tool()
    build = _build_dir()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 33)).astype(np.float32)
    t = rng.integers(0, 33, 7)
    active = csoftmax.config()["simd"]
    for path in csoftmax.config()["cpu_paths_available"]:
        fr = tool.load_frontend(build, path)
        if path == active:             # the very kernels of the public functions
            np.testing.assert_array_equal(fr.softmax(x), csoftmax.softmax(x))
        else:                          # with FMA or without: an ulp apart at most
            np.testing.assert_allclose(fr.softmax(x), csoftmax.softmax(x), rtol=2.4e-7, atol=0)
        assert fr.cross_entropy(x, t) == pytest.approx(csoftmax.cross_entropy(x, t), rel=1e-6)


def test_public_functions_of_a_build_are_csoftmaxs():
    tool = _tool()
    build = _build_dir()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 10)).astype(np.float32)
    t = rng.integers(0, 10, 300)
    want = csoftmax.cross_entropy(x, t), csoftmax.cross_entropy(x, t, return_token_accuracy=True)
    # the build in use is the module csoftmax imported (an extension module loads once per
    # file): binding its public functions binds csoftmax's, restored below
    module = tool.load_public(build, csoftmax.config()["simd"])
    try:
        np.testing.assert_array_equal(module.cross_entropy(x, t), want[0])
        # a call the fast path declines reaches the bound Frontend's method
        got = module.cross_entropy(x, t, return_token_accuracy=True)
        np.testing.assert_array_equal(got.token_accuracy, want[1].token_accuracy)
        with pytest.raises(ValueError, match="is not a class index"):
            module.cross_entropy(x, np.full(300, 10))
    finally:
        csoftmax._dispatch.KERNELS.bind_public(csoftmax._active)


def test_missing_build_names_the_directory(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        _tool().load_frontend(str(tmp_path), "baseline")


@pytest.mark.parametrize("public", [False, True])
def test_report_has_every_case_and_build(tmp_path, capsys, public):
    build = _build_dir()
    cases = tmp_path / "cases.py"
    cases.write_text(
        "x = rng.standard_normal((16, 10), dtype=np.float32)\n"
        "cases['tiny_softmax'] = lambda fr: fr.softmax(x, num_threads=nt)\n"
        "cases['tiny_lse'] = lambda fr: fr.logsumexp(x, num_threads=nt)\n")
    path = csoftmax.config()["cpu_paths_available"][0]
    try:
        _tool().main([build, build, "--cpu", path, "--threads", "1", "--reps", "3",
                      "--cases", str(cases)] + (["--public"] if public else []))
    finally:
        csoftmax._dispatch.KERNELS.bind_public(csoftmax._active)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"SIMD path {path}, 1 thread(s), 3 rounds"
                             + (", public functions;" if public else ";"))
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == {"tiny_softmax", "tiny_lse"}
    for line in rows.values():
        assert line.count(": min ") == 2 and f"{build}#0: min" in line and f"{build}#1: min" in line
        assert "ratio 1.000" in line  # the first build's own ratio


def test_gap_sleeps_before_each_timed_call(tmp_path, capsys, monkeypatch):
    """--gap: one sleep of the given length before each timed call (2 builds x 2 cases x
    3 rounds), named in the report's first line."""
    build = _build_dir()
    cases = tmp_path / "cases.py"
    cases.write_text(
        "x = rng.standard_normal((4, 10), dtype=np.float32)\n"
        "cases['a'] = lambda fr: fr.softmax(x, num_threads=nt)\n"
        "cases['b'] = lambda fr: fr.logsumexp(x, num_threads=nt)\n")
    tool = _tool()
    slept = []
    monkeypatch.setattr(tool.time, "sleep", slept.append)
    path = csoftmax.config()["cpu_paths_available"][0]
    tool.main([build, build, "--cpu", path, "--threads", "1", "--reps", "3",
               "--cases", str(cases), "--gap", "0.002"])
    out = capsys.readouterr().out.splitlines()
    assert slept == [0.002] * 12
    assert out[0].startswith(f"SIMD path {path}, 1 thread(s), 3 rounds, 2 ms asleep before "
                             "each call;")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
