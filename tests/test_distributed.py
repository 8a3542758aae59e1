"""torchrun on the CPU: gloo processes on loopback train like one process with the same global batch, only rank 0
writes, a killed rank ends the run with one line and the run resumes under another world size, and the study (a
transfer run, a folder of images) runs under torchrun with its data and caches built once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from folders import make_folder
from safetensors.torch import load_file

from imgclf.cli import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "imgclf"]
RANK_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores: one thread each


def torchrun(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``imgclf ARGS`` as 2 gloo ranks on this machine."""
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=RANK_ENV, timeout=timeout)


def tiny_run(tmp_path, data_dir, name: str, batch_size: int, model: str = "simple_cnn", epochs: int = 2) -> list[str]:
    return [
        "train", "--model", model, "--device", "cpu", "--data-dir", str(data_dir), "--output", str(tmp_path),
        "--name", name, "--train-subset", "512", "--batch-size", str(batch_size), "--epochs", str(epochs),
        "--lr", "0.02", "--warmup-epochs", "0", "--precision", "fp32", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def files_of(run: Path) -> set[str]:
    """The run's files; TensorBoard's event files (named by host, time and process) as one name."""
    return {
        "tensorboard/events" if p.name.startswith("events.") else p.relative_to(run).as_posix() for p in run.rglob("*")
    }


def test_two_gloo_ranks_train_like_one_process_with_the_global_batch(tmp_path, data_dir):
    """Rank r's shard of each epoch, batch 32 on each of 2 ranks, DDP's averaged gradients: the loss curve of one
    process with batch 64 to within 5% (BatchNorm sees 32 images per rank instead of 64: not bit-equal)."""
    result = torchrun([*tiny_run(tmp_path, data_dir, "two", 32), "--tensorboard"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert main([*tiny_run(tmp_path, data_dir, "one", 64), "--tensorboard"]) == 0
    two, one = history(tmp_path / "two"), history(tmp_path / "one")
    assert [r["epoch"] for r in two] == [1, 2]  # each epoch logged once: rank 0 alone writes
    for a, b in zip(two, one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)
        assert a["lr"] == b["lr"]
    assert files_of(tmp_path / "two") == files_of(tmp_path / "one")  # event files named alike: one per run
    assert len(list((tmp_path / "two" / "tensorboard").glob("events.*"))) == 1
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["num_train"] == 512 and summary["epochs_run"] == 2
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["test_images"] == 10_000


def test_two_nodes_meeting_by_c10d_rendezvous_train_like_one_node(tmp_path, data_dir):
    """README's two-machine command as two agents on this machine (one process each, c10d rendezvous on loopback):
    the same files and the same losses as one agent running both ranks."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    agent += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "imgclf-test"]
    agent += ["--rdzv-conf", "join_timeout=120", "--local-addr", "127.0.0.1", "-m", "imgclf"]
    agent += tiny_run(tmp_path, data_dir, "nodes", 32)
    logs = [tmp_path / f"node{k}.log" for k in range(2)]
    nodes = [subprocess.Popen(agent, stdout=log.open("w"), stderr=subprocess.STDOUT, env=RANK_ENV) for log in logs]
    try:
        codes = [node.wait(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert codes == [0, 0], "".join(log.read_text()[-2000:] for log in logs)
    result = torchrun(tiny_run(tmp_path, data_dir, "one_node", 32))
    assert result.returncode == 0, result.stderr[-3000:]
    assert files_of(tmp_path / "nodes") == files_of(tmp_path / "one_node")
    for a, b in zip(history(tmp_path / "nodes"), history(tmp_path / "one_node"), strict=True):
        assert a["epoch"] == b["epoch"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("nodes", "one_node")]
    assert metrics[0]["test_accuracy"] == pytest.approx(metrics[1]["test_accuracy"], abs=2e-3)


def sync_bn_rank(rank: int, store: str, results) -> None:
    """One of two gloo ranks: its half of a batch through GlooSyncBatchNorm, forward and backward."""
    import torch.distributed as dist

    from imgclf.training.distributed import GlooSyncBatchNorm

    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    x, weights, bn = sync_bn_case()
    synced = GlooSyncBatchNorm(4)
    synced.load_state_dict(bn.state_dict())
    half = x[rank * 6 : (rank + 1) * 6].clone().requires_grad_(True)
    out = synced(half)
    (out * weights).sum().backward()
    grads = torch.stack([synced.weight.grad, synced.bias.grad])
    dist.all_reduce(grads)  # what DDP does with the parameters' gradients (before dividing by the world size)
    # plain arrays, pickled by value: a tensor would travel as a shared-memory handle that the parent can no longer
    # open once this process has exited (seen as 'connection reset by peer' or a missing socket under load)
    tensors = (out.detach(), half.grad, grads, synced.running_mean, synced.running_var)
    results.put((rank, *(t.detach().numpy().copy() for t in tensors)))
    dist.barrier()  # neither rank tears the group down while the other still talks to it (a slow peer: reset)
    dist.destroy_process_group()


def sync_bn_case() -> tuple[torch.Tensor, torch.Tensor, torch.nn.BatchNorm2d]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, 5, 5, generator=generator) * 3 + 2
    bn = torch.nn.BatchNorm2d(4)
    bn.weight.data.uniform_(0.5, 1.5, generator=generator)
    bn.bias.data.uniform_(-1, 1, generator=generator)
    return x, torch.randn(1, 4, 5, 5, generator=generator), bn


def test_gloo_sync_batchnorm_equals_batchnorm_over_the_global_batch(tmp_path):
    """Two CPU ranks with half a batch each: outputs, input gradients, the parameters' summed gradients and the
    running statistics of BatchNorm2d over the whole batch."""
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=sync_bn_rank, args=(r, str(tmp_path / "store"), results)) for r in range(2)]
    for process in ranks:
        process.start()
    got = {r[0]: [torch.from_numpy(a) for a in r[1:]] for r in (results.get(timeout=120) for _ in ranks)}
    for process in ranks:
        process.join(60)
        assert process.exitcode == 0
    x, weights, bn = sync_bn_case()
    x.requires_grad_(True)
    out = bn(x)
    (out * weights).sum().backward()
    for rank, (part, grad, param_grads, running_mean, running_var) in got.items():
        rows = slice(rank * 6, (rank + 1) * 6)
        torch.testing.assert_close(part, out[rows].detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, x.grad[rows], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(param_grads, torch.stack([bn.weight.grad, bn.bias.grad]), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(running_mean, bn.running_mean)
        torch.testing.assert_close(running_var, bn.running_var)


def test_sync_bn_ranks_train_like_one_process(tmp_path, data_dir):
    """With --sync-bn every BatchNorm normalises by the global batch's statistics, so (without augmentation or
    dropout) 2 ranks × 32 images compute what one process computes on 64: ResNet-20's weights after 2 steps differ
    only by rounding (amplified by training: the same run on 1 and 2 threads differs by ~1e-3), and by far less than
    without --sync-bn, where each rank normalises its 32 images alone."""
    common = ["--augment", "none", "--no-evaluate", "--train-subset", "128", "--lr", "0.05", "--epochs", "1"]
    result = torchrun([*tiny_run(tmp_path, data_dir, "synced", 32, "resnet20"), *common, "--sync-bn"])
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun([*tiny_run(tmp_path, data_dir, "unsynced", 32, "resnet20"), *common])
    assert result.returncode == 0, result.stderr[-3000:]
    assert main([*tiny_run(tmp_path, data_dir, "one", 64, "resnet20"), *common]) == 0

    def weights(name: str) -> dict[str, torch.Tensor]:
        found = load_file(tmp_path / name / "checkpoints" / "epoch-0001" / "weights.safetensors")
        return {k: v.float() for k, v in found.items() if v.is_floating_point() and "running" not in k}

    one = weights("one")
    synced, unsynced = (
        max((w[k] - one[k]).abs().max().item() for k in one) for w in map(weights, ["synced", "unsynced"])
    )
    assert synced < 5e-3 and synced * 4 < unsynced, (synced, unsynced)


def rank_pids(launcher: int) -> dict[int, int]:
    """RANK → pid of the torchrun workers started by the launcher process ``launcher``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == launcher:
            continue
        try:
            env = dict(v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if env.get(b"TORCHELASTIC_RUN_ID") and b"LOCAL_RANK" in env and b"RANK" in env:
            found[int(env[b"RANK"])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_ends_the_run_in_one_line_and_it_resumes_on_one_process(tmp_path, data_dir):
    run = tmp_path / "killed"
    args = [*tiny_run(tmp_path, data_dir, "killed", 32, epochs=6), "--train-subset", "2048", "--no-evaluate"]
    launcher = subprocess.Popen(
        [*TORCHRUN, *args], env=RANK_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.json").is_file():  # the first epoch is saved
        assert launcher.poll() is None and time.monotonic() < deadline, "the run did not reach its first checkpoint"
        time.sleep(0.1)
    pids = rank_pids(launcher.pid)
    assert set(pids) == {0, 1}
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert time.monotonic() - killed_at < 60  # rank 0 noticed at its next collective, not after a timeout
    assert launcher.returncode != 0
    lines = [line for line in stderr.splitlines() if "imgclf: " in line]
    assert len(lines) == 1, stderr[-3000:]
    # rank 0 finds its peer gone at its next collective — or, when torchrun is quicker, torchrun's SIGTERM stops it
    lost_peer = "imgclf: error: rank 0 of 2: another rank stopped" in lines[0]
    assert (lost_peer and f"imgclf train --resume {run}" in lines[0]) or "imgclf: stopped by SIGTERM" in lines[0]
    assert "imgclf train --resume" in lines[0]
    assert "[rank0]: Traceback" not in stderr and "[rank1]: Traceback" not in stderr
    done = [r["epoch"] for r in history(run)]
    assert done and done == list(range(1, len(done) + 1)) and len(done) < 6

    assert main(["train", "--resume", str(run)]) == 0  # one process now: another world size
    assert [r["epoch"] for r in history(run)] == [1, 2, 3, 4, 5, 6]
    state = torch.load(run / "checkpoints" / "epoch-0006" / "state.pt", weights_only=True)
    assert state["steps_per_epoch"] == 2048 // 32 and state["step"] == 6 * 2048 // 32  # the schedule re-based
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 6


def test_a_study_with_a_transfer_run_on_a_folder_under_two_ranks(tmp_path):
    """`imgclf study` under torchrun: a network from scratch and an EfficientNet-Lite0 transfer run (cached
    activations), on a folder of images prepared once; rank 0 writes every file once and evaluates."""
    folder = make_folder(tmp_path / "colours", ["red", "green", "blue", "yellow"], 16)
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "runs:\n"
        "  scratch: {model: simple_cnn, epochs: 2, batch_size: 8}\n"
        "  transfer: {model: tf_efficientnet_lite0, pretrained: true, img_size: 64, head_epochs: 2, head_lr: 0.01,"
        " epochs: 1, unfreeze: '2', batch_size: 8, optimizer: adamw, lr: 0.0005}\n"
    )
    sets = {"prepare_dir": tmp_path / "prepared", "cache_dir": tmp_path / "cache", "device": "cpu"}
    sets.update(val_fraction=0.25, test_fraction=0.25, tensorboard="false")
    args = ["study", "--preset", str(preset), "--output", str(tmp_path / "study"), "--data", str(folder)]
    args += ["--no-progress"] + [f"--set={k}={v}" for k, v in sets.items()]
    result = torchrun(args)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "study" / "study.json").read_text())
    assert set(record["runs"]) == {"scratch", "transfer"}
    assert all(r["status"] == "trained" and 0 <= r["test_accuracy"] <= 1 for r in record["runs"].values())
    assert result.stdout.count("study finished") == 1  # rank 0 alone reports
    transfer = tmp_path / "study" / "transfer"
    assert [(r["epoch"], r["phase"]) for r in history(transfer)] == [(1, 1), (2, 1), (3, 2)]
    assert [r["epoch"] for r in history(tmp_path / "study" / "scratch")] == [1, 2]
    for run in ("scratch", "transfer"):
        assert json.loads((tmp_path / "study" / run / "metrics.json").read_text())["test_images"] == 16
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())  # training's train, mirrored and val images,
    assert len(caches) == 4 and all(name.endswith(".safetensors") for name in caches)  # evaluation's test images
    prepared = [p for p in (tmp_path / "prepared").iterdir() if not p.name.startswith(".")]
    assert len(prepared) == 2  # the folder at 32 px (from scratch) and at 64 px (the transfer run's input side)
    assert not list((tmp_path / "prepared").glob(".*.tmp"))
    assert (tmp_path / "study" / "comparison" / "report.html").is_file()


def test_sigterm_stops_a_run_in_one_line_and_it_resumes(tmp_path, data_dir):
    """SIGTERM (torchrun stopping the other ranks, a scheduler ending a job) ends training with one line naming how
    to resume, exit status 143; the run resumes from its last checkpoint."""
    run = tmp_path / "stopped"
    args = [*tiny_run(tmp_path, data_dir, "stopped", 32, epochs=6), "--train-subset", "2048", "--no-evaluate"]
    process = subprocess.Popen(
        [sys.executable, "-m", "imgclf", *args],
        env=RANK_ENV,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("imgclf: stopped by SIGTERM (resume a training run with")
    assert main(["train", "--resume", str(run)]) == 0
    assert [r["epoch"] for r in history(run)] == [1, 2, 3, 4, 5, 6]
