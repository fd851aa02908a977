"""The speed benchmark runs end to end on one image and checks parity (no timing assertions: the
figures depend on the machine; this keeps the script from rotting)."""

import json
import os
import subprocess
import sys

from testdata import ROOT


def test_benchmark_short_run_prints_figures_and_passes_parity(tmp_path):
    figures_file = tmp_path / "figures.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "benchmarks/maskrcnn_speed.py", "--short", "--json", str(figures_file)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "fp32 parity with torchvision: PASS" in out
    for text in ("median latency (s)", "speed-up vs torchvision", "peak RSS", "parity segfpn_fp32:",
                 "parity segfpn_bf16:", "same class and box IoU >= 0.5", "fp32 floor", "panoptic FPN",
                 "bf16 on a trained model"):
        assert text in out, text
    figures = json.loads(figures_file.read_text())[0]
    impls = figures["implementations"]
    assert set(impls) >= {"torchvision", "segfpn_fp32", "segfpn_bf16"}
    parity = impls["segfpn_fp32"]["parity"][0]
    assert parity["detections"] == 100 and parity["ok"]
    for impl in impls.values():
        assert impl["median_s"] > 0 and impl["peak_rss_mb"] > 0
    assert figures["flops"] > 1e11 and figures["panoptic"]["ratio"] > 0
    trained = json.loads(figures_file.read_text())[-1]
    assert trained["label"] == "trained low precision" and trained["precision"] == "bf16"
    assert len(trained["parity"]) == trained["images"] == 4
    for precision in ("fp32", "bf16"):
        assert 0.5 < trained["metrics"][precision]["PQ"] <= 1  # the bundled model is good on its held-out set
