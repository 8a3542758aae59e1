"""torchrun on the CPU: two gloo processes on loopback train like one process with the same global batch, and only
rank 0 writes the run."""

import json
import os
import subprocess
import sys

import pytest

from imgclf.cli import main


def tiny_run(tmp_path, data_dir, name: str, batch_size: int) -> list[str]:
    return [
        "train", "--model", "simple_cnn", "--device", "cpu", "--data-dir", str(data_dir), "--output", str(tmp_path),
        "--name", name, "--train-subset", "512", "--batch-size", str(batch_size), "--epochs", "2", "--lr", "0.02",
        "--warmup-epochs", "0", "--precision", "fp32", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_train_like_one_process_with_the_global_batch(tmp_path, data_dir):
    """Rank r's shard of each epoch, batch 32 on each of 2 ranks, DDP's averaged gradients: the loss curve of one
    process with batch 64 to within 5% (BatchNorm sees 32 images per rank instead of 64: not bit-equal)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "imgclf", *tiny_run(tmp_path, data_dir, "two", 32)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert main(tiny_run(tmp_path, data_dir, "one", 64)) == 0
    two, one = history(tmp_path / "two"), history(tmp_path / "one")
    assert [r["epoch"] for r in two] == [1, 2]  # each epoch logged once: rank 0 alone writes
    for a, b in zip(two, one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)
        assert a["lr"] == b["lr"]
    files = {p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*")}
    assert files == {p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*")}
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["num_train"] == 512 and summary["epochs_run"] == 2
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["test_images"] == 10_000
