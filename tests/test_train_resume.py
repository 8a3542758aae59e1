"""End-to-end training on a slice of real CIFAR-10: outputs, and interrupt-and-resume equivalence."""

import json

import pytest
import torch
from safetensors.torch import load_file

from imgclf.artifacts.weights import read_metadata
from imgclf.cli import main
from imgclf.data.loader import BatchLoader
from imgclf.training.checkpoint import checkpoint_files
from imgclf.training.history import read_history


def run(tmp_path, name, options, extra=()):
    assert main(["train", "--name", name, *options, *extra]) == 0
    return tmp_path / name


def cut_at_training_batch(tmp_path, monkeypatch, options, batch: int):
    """Train run 'cut' with ``options``, interrupted (as by Ctrl-C) at its training loader's ``batch``-th batch."""
    original_iter = BatchLoader.__iter__
    seen = {"n": 0}

    def interrupting_iter(self):
        for item in original_iter(self):
            seen["n"] += self.shuffle  # the training loader's batches only
            if seen["n"] == batch:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(BatchLoader, "__iter__", interrupting_iter)
    assert main(["train", "--name", "cut", *options]) == 130
    monkeypatch.setattr(BatchLoader, "__iter__", original_iter)
    return tmp_path / "cut"


def test_training_writes_run_directory(tmp_path, tiny_options):
    options = [o for o in tiny_options if o not in ("--no-evaluate", "--no-tensorboard")]
    run_dir = run(tmp_path, "r", options, ["--model", "simple_cnn", "--epochs", "2", "--early-stopping", "5"])
    history = read_history(run_dir / "history.jsonl")
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"} <= set(history[0])
    assert history[0]["cpu_threads"] and all(n >= 1 for n in history[0]["cpu_threads"])  # the counts it trained with
    for name in ("config.yaml", "best.safetensors", "summary.json", "metrics.json", "model.json"):
        assert (run_dir / name).is_file(), name
    assert checkpoint_files(run_dir / "checkpoints")["weights"].name == "weights.safetensors"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_images"] == 10_000 and 0.0 <= metrics["test_accuracy"] <= 1.0


@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_interrupted_run_resumes_to_the_same_history(tmp_path, tiny_options, monkeypatch, ema):
    options = [*tiny_options, "--model", "resnet20", "--epochs", "3", "--ema-decay", ema, "--lr", "0.05"]
    # one thread throughout: a thread count following the machine's load would change bf16 sums between the runs
    options += ["--threads", "1"]
    full = run(tmp_path, "full", options)

    cut = cut_at_training_batch(tmp_path, monkeypatch, options, 3 * 2 + 1)
    assert [h["epoch"] for h in read_history(cut / "history.jsonl")] == [1, 2]
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0

    expected, resumed = read_history(full / "history.jsonl"), read_history(cut / "history.jsonl")
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(expected, resumed, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a, b)
    w_full = load_file(checkpoint_files(full / "checkpoints")["weights"])
    w_cut = load_file(checkpoint_files(cut / "checkpoints")["weights"])
    assert all(torch.allclose(w_full[k], w_cut[k], atol=1e-5) for k in w_full)


@pytest.mark.parametrize("val_fraction", ["0", "0.1"])
def test_checkpoint_every_writes_fewer_checkpoints_and_a_cut_run_without_one_starts_over(
    tmp_path, tiny_options, monkeypatch, val_fraction
):
    """--checkpoint-every SECONDS: a run shorter than that writes one checkpoint and the best weights once, at its
    last epoch (the best epoch's weights, held until then); cut before any checkpoint, --resume trains from the
    start and ends as the uninterrupted run."""
    options = [*tiny_options, "--model", "simple_cnn", "--epochs", "3", "--val-fraction", val_fraction]
    options += ["--checkpoint-every", "3600", "--threads", "1"]  # one thread: the cut run repeats the whole one
    writes = {"n": 0}
    import imgclf.training.callbacks as callbacks

    def counting(write):
        def counted(*args, **kwargs):
            writes["n"] += 1
            return write(*args, **kwargs)

        return counted

    for name in ("save_weights", "save_tensors"):
        monkeypatch.setattr(callbacks, name, counting(getattr(callbacks, name)))
    full = run(tmp_path, "full", options)
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["epoch-0003", "last.json"]
    best_epoch = json.loads((full / "summary.json").read_text())["best_epoch"]
    assert writes["n"] == 1 and read_metadata(full / "best.safetensors")["epoch"] == best_epoch
    assert best_epoch == 3 or val_fraction != "0"
    assert [h["epoch"] for h in read_history(full / "history.jsonl")] == [1, 2, 3]

    cut = cut_at_training_batch(tmp_path, monkeypatch, options, 3 * 2 + 1)
    assert checkpoint_files(cut / "checkpoints") is None and len(read_history(cut / "history.jsonl")) == 2
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    expected, resumed = read_history(full / "history.jsonl"), read_history(cut / "history.jsonl")
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(expected, resumed, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5), (a, b)


def test_resume_steps_with_this_devices_optimizer_kernels(tmp_path, tiny_options, data_dir):
    """A checkpoint of fused SGD (as a GPU saves it) resumed on the CPU steps with the CPU's SGD: the optimizer's
    state comes from the checkpoint, its kernels from the device it runs on."""
    import dataclasses

    from imgclf.artifacts.runs import RunDir, run_splits
    from imgclf.training.run import scratch_trainer

    run_dir = run(tmp_path, "k", tiny_options, ["--model", "simple_cnn", "--epochs", "1"])
    files = checkpoint_files(run_dir / "checkpoints")
    state = torch.load(files["state"], weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["fused"], group["foreach"] = True, None
    torch.save(state, files["state"])
    cfg = dataclasses.replace(RunDir(run_dir).read_config(), data_dir=str(data_dir))
    trainer = scratch_trainer(cfg, run_dir, run_splits(cfg))
    trainer.resume(files)
    assert trainer.epoch == 1 and trainer.optimizer.state  # the momentum buffers came back
    assert not any(group["fused"] for group in trainer.optimizer.param_groups)


def test_resume_of_a_finished_run_changes_nothing(tmp_path, tiny_options):
    run_dir = run(tmp_path, "done", tiny_options, ["--model", "simple_cnn", "--epochs", "1"])
    before = (run_dir / "history.jsonl").read_text()
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert (run_dir / "history.jsonl").read_text() == before


def test_early_stopping_ends_the_run(tmp_path, tiny_options):
    # a learning rate of zero never improves validation accuracy after the first epoch
    run_dir = run(
        tmp_path, "es", tiny_options, ["--model", "simple_cnn", "--epochs", "8", "--lr", "0", "--early-stopping", "2"]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] and summary["epochs_run"] == 3


def test_progressive_resizing_works_for_every_network(tmp_path, tiny_options):
    common = ["--epochs", "2", "--progressive-size", "16", *tiny_options]
    for model in ("simple_cnn", "vgg10", "resnet20"):  # Flatten heads pool to their 32-px map size
        assert main(["train", "--name", model, "--model", model, *common]) == 0
        assert len(read_history(tmp_path / model / "history.jsonl")) == 2


def test_compiled_training_is_used_and_a_failed_compile_falls_back_to_eager(tmp_path, tiny_options, monkeypatch):
    """On a GPU the network being trained runs through torch.compile (here forced on the CPU, with stand-ins): the
    compiled module trains, validation runs the plain one; a compile that fails trains on in eager mode, once warned."""
    import imgclf.training.trainer as trainer

    calls = {"compiled": 0, "failed": 0}

    def working(module, mode):
        def forward(images):
            calls["compiled"] += 1
            return module(images)

        return forward

    def failing(module, mode):
        def forward(images):
            calls["failed"] += 1
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

        return forward

    monkeypatch.setattr(trainer, "compiles_training", lambda cfg, device: cfg.compile)
    options = [*tiny_options, "--model", "simple_cnn", "--epochs", "1"]
    monkeypatch.setattr(torch, "compile", working)
    assert main(["train", "--name", "compiled", *options]) == 0
    assert calls["compiled"] == 3  # 384 images in batches of 128: every training step, no validation batch
    monkeypatch.setattr(torch, "compile", failing)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert main(["train", "--name", "fallback", *options]) == 0
    assert calls["failed"] == 1 and read_history(tmp_path / "fallback" / "history.jsonl")[0]["epoch"] == 1
    assert main(["train", "--name", "eager", *options, "--no-compile"]) == 0  # --no-compile: not compiled at all
    assert calls["compiled"] == 3 and calls["failed"] == 1


def test_a_weights_file_the_disk_refuses_is_an_os_error_naming_it_and_the_old_file_stays(tmp_path, monkeypatch):
    """safetensors' own error (not an OSError) becomes one, with the system's error number; nothing half-written."""
    import errno

    from safetensors import SafetensorError

    import imgclf.artifacts.weights as weights

    path = tmp_path / "best.safetensors"
    weights.save_tensors(path, {"w": torch.ones(3)}, {"epoch": 1})

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(weights, "save_file", full_disk)
    with pytest.raises(OSError) as error:
        weights.save_tensors(path, {"w": torch.zeros(3)}, {"epoch": 2})
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    assert read_metadata(path) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == [path.name]


def small_file_system(folder, size: str):
    """Mount a tmpfs of ``size`` on ``folder`` (or resize it); False where this process may not mount."""
    import subprocess

    folder.mkdir(exist_ok=True)
    options = f"size={size}" + (",remount" if folder.is_mount() else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


def test_training_onto_a_full_disk_is_one_line_and_the_run_resumes_exactly(tmp_path, tiny_options, capsys):
    """A real full file system (a 600-KB tmpfs: the config fits, the weights do not): one error line, exit 2; the
    disk made larger, --resume finishes the run as an uninterrupted one would."""
    import subprocess

    options = [*tiny_options, "--model", "simple_cnn", "--epochs", "2", "--threads", "1"]
    full = run(tmp_path, "uninterrupted", options)
    disk = tmp_path / "disk"
    if not small_file_system(disk, "600k"):
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN); the unit test above covers the error")
    try:
        capsys.readouterr()
        assert main(["train", "--name", "cut", *options, "--output", str(disk)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("imgclf: error: ") and "no space left on device" in err[0], err
        assert str(disk / "cut") in err[0]
        assert small_file_system(disk, "64m")
        assert main(["train", "--resume", str(disk / "cut"), "--no-progress"]) == 0
        expected, resumed = read_history(full / "history.jsonl"), read_history(disk / "cut" / "history.jsonl")
        drop = ("epoch_seconds", "cpu_threads")
        assert [{k: v for k, v in h.items() if k not in drop} for h in resumed] == [
            {k: v for k, v in h.items() if k not in drop} for h in expected
        ]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
