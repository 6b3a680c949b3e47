"""Loader throughput: the DALI loader vs the PyAV/numpy reference loader on avdigits, and the
cost of loading during training (a training step's time with the loader vs with the same
batches already in memory; the loader hides behind compute when the ratio is <= 1.1).

Full run (prints JSON; --json also writes it):
    PYTHONPATH=. python benchmarks/bench_loaders.py --root DIR [--json out.json]
As pytest-benchmark (a tiny generated dataset, one epoch per round):
    PYTHONPATH=. pytest benchmarks/bench_loaders.py --benchmark-only
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mmfast._io import write_text_atomic
from mmfast.data.avdigits import AVDigitsConfig, make_avdigits
from mmfast.data.difficulty import ModalityCNN
from mmfast.data.loader import MultiModalLoader, load_split
from mmfast.data.reference_loader import ReferenceLoader
from mmfast.nn.model import MODALITIES


def _loaders(root, batch_size: int, threads: int) -> dict:
    return {
        "dali": lambda: MultiModalLoader(root, "train", batch_size, decode_device="auto",
                                         num_threads=threads, shuffle=True),
        "reference": lambda: ReferenceLoader(root, "train", batch_size, shuffle=True),
    }


def samples_per_second(loader, epochs: int = 2) -> float:
    """Samples/s over ``epochs`` full epochs (after one warm-up batch)."""
    next(iter(loader))
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["label"])
    return n / (time.perf_counter() - start)


class LateFusion(nn.Module):
    """One small CNN per modality, summed logits: the compute of a typical avdigits step."""

    def __init__(self, in_channels: dict[str, int], num_classes: int = 10) -> None:
        super().__init__()
        self.nets = nn.ModuleDict({m: ModalityCNN(c, num_classes) for m, c in in_channels.items()})

    def forward(self, batch: dict) -> torch.Tensor:
        return sum(net(batch[m]) for m, net in self.nets.items())


def train_epoch_seconds(model: nn.Module, batches, opt: torch.optim.Optimizer) -> float:
    """Wall time of one epoch of training steps over ``batches`` (an iterable of batches)."""
    start = time.perf_counter()
    for batch in batches:
        loss = nn.functional.cross_entropy(model(batch), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def step_time_ratio(root, batch_size: int, threads: int, epochs: int = 2) -> dict:
    """Training time with batches from the DALI loader / with the same data in memory."""
    loader = MultiModalLoader(root, "train", batch_size, decode_device="auto",
                              num_threads=threads, shuffle=True)
    data = load_split(root, "train", decode_device="auto")
    channels = {m: data[m].shape[-3] for m in MODALITIES}
    model = LateFusion(channels).to(data["label"].device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def memory_batches():
        order = torch.randperm(len(data["label"]))
        for idx in order.split(batch_size):
            yield {k: v[idx] for k, v in data.items()}

    train_epoch_seconds(model, memory_batches(), opt)  # warm-up
    t_memory = min(train_epoch_seconds(model, memory_batches(), opt) for _ in range(epochs))
    t_loader = min(train_epoch_seconds(model, loader, opt) for _ in range(epochs))
    return {"epoch_s_in_memory": t_memory, "epoch_s_with_loader": t_loader,
            "ratio": t_loader / t_memory}


def run(root, batch_size: int = 32, threads: int = 2) -> dict:
    result = {"root": str(root), "batch_size": batch_size, "dali_threads": threads,
              "torch_threads": torch.get_num_threads(), "machine": platform.processor() or
              platform.machine(), "cuda": torch.cuda.is_available()}
    for name, make in _loaders(root, batch_size, threads).items():
        result[f"{name}_samples_per_s"] = samples_per_second(make())
    result["dali_over_reference"] = (result["dali_samples_per_s"]
                                     / result["reference_samples_per_s"])
    result["train_step"] = step_time_ratio(root, batch_size, threads)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="avdigits folder (default: make 20 per class in a tmp dir)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="DALI worker threads")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else make_avdigits(
            tmp, AVDigitsConfig(num_per_class=20)).parent
        result = run(root, args.batch_size, args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        write_text_atomic(args.json, text + "\n")
    return 0


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_avdigits")
    make_avdigits(root, AVDigitsConfig(num_per_class=5))
    return root


@pytest.mark.parametrize("name", ["dali", "reference"])
def test_bench_loaders(benchmark, bench_root, name):
    loader = _loaders(bench_root, 16, 1)[name]()
    n = benchmark.pedantic(lambda: sum(len(b["label"]) for b in loader), rounds=3,
                           warmup_rounds=1)
    benchmark.extra_info.update(samples_per_epoch=n, loader=name,
                                samples_per_s=n / benchmark.stats.stats.mean)


if __name__ == "__main__":
    raise SystemExit(main())
