"""A real 2-process CPU data-parallel run under torchrun (gloo): seconds on one core each."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_two_process_cpu_ddp(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(Path(__file__).with_name("_ddp_worker.py")), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    # DDP kept the replicas identical
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    # each rank trained on its own half of the data, together all of it
    a, b = (set(r["indices"].tolist()) for r in ranks)
    assert not a & b and a | b == set(range(64))
    # only rank 0 wrote the run directory, completely
    for name in ("model.pt", "train_stats.json", "metrics.jsonl", "checkpoints/late.pt"):
        assert (tmp_path / "run" / name).exists(), name
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one epoch, logged once (not once per rank)
