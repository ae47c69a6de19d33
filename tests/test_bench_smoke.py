"""Smoke test of the benchmark suite (``python -m bench``).

It runs end to end on a tiny configuration and writes the JSON it promises;
no timing is asserted.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

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
