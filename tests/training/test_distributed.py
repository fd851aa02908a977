"""Two CPU processes under torchrun (gloo): both train, their parameters stay identical, rank 0
alone logs and writes one checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from segfpn.training.checkpoint import STATE_FILE, find_last_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_torchrun_two_cpu_processes(tiny_config_dict, tmp_path):
    config = tiny_config_dict(solver__max_iter=2, device="cpu", num_threads=1)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "ranks"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(WORKER), str(path), str(out)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # The distributed sampler gives the two processes different images of each epoch.
    assert not set(ranks[0]["first_epoch"]) & set(ranks[1]["first_epoch"])
    # Gradients are averaged: after two steps on different images the parameters are identical.
    for name, p0 in ranks[0]["state"].items():
        assert torch.equal(p0, ranks[1]["state"][name]), name
    # Rank 0 alone logs and saves.
    assert [h["iteration"] for h in ranks[0]["history"]] == [1, 2] and ranks[1]["history"] == []
    run = Path(config["output_dir"])
    checkpoints = sorted(p.name for p in run.glob("checkpoint_*"))
    assert checkpoints == ["checkpoint_0000002"]
    state = torch.load(find_last_checkpoint(run) / STATE_FILE, weights_only=True)
    assert len(state["rng"]) == 2 and state["data"]["world_size"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
