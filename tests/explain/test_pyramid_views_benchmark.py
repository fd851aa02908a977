"""benchmarks/pyramid_views.py runs end to end on the bundled model (no timing assertions: the
figures depend on the machine; this keeps the script from rotting)."""

import re
import subprocess
import sys

from testdata import ROOT


def test_benchmark_prints_every_figure():
    proc = subprocess.run([sys.executable, "benchmarks/pyramid_views.py", "--models", "bundled", "--runs", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    assert "truck_1800x1200.jpg at 384x256, 100 detections" in out
    for label in ("predict (full run)", "inspect (the run, kept)", "what_if(level=3)", "what_if(canonical_size=112)",
                  "explain(i), first call", "explain(i), next calls"):
        assert re.search(re.escape(label) + r"\s+[\d.]+ ms", out), label
    assert re.search(r"what_if\(level=3\)\s+\d+ ms\s+[\d.]+ % of predict", out)
