"""Test-time augmentation beyond the mirror image, measured on the validation split of finished runs.

    uv run python benchmarks/tta_views.py benchmarks/runs/train_resnet20_seed0 \
        benchmarks/runs/study_reference/transfer_224 --cache-dir benchmarks/runs/cache_study_reference

imgclf's `--tta` averages a model's logits for an image and its mirror image. airbench adds views shifted by one
pixel; this measures whether such views help imgclf's models. Each view set is averaged as airbench weights it: half
on the image and its mirror, half on the shifted views (each shift of the image and of its mirror). A shift moves the
model's input one position with reflect padding: one pixel for a from-scratch model, one cell of the cached
activation map for a cached transfer run (16 px at 224). Validation split only: this decides whether imgclf should
ship more views, so the test split is not read. Writes benchmarks/results/tta_views.json.
"""

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_result

from imgclf.artifacts.files import BEST_WEIGHTS
from imgclf.artifacts.runs import RunDir, run_splits
from imgclf.core.device import autocast, resolve_precision
from imgclf.data.loader import BatchLoader
from imgclf.inference.load import load_network
from imgclf.models.transfer import TransferModel, activation_cache

SHIFTS = {"up-left": (-1, -1), "down-right": (1, 1), "up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
VIEW_SETS = {  # name: shifts averaged with the image and its mirror
    "single": None,
    "flip": [],
    "flip + 2 diagonal shifts (airbench)": ["up-left", "down-right"],
    "flip + 4 axis shifts": ["up", "down", "left", "right"],
}


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (N, C, H, W) moved by (dy, dx) positions, the edge filled by reflection."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].contiguous(memory_format=torch.channels_last)


def input_batches(run_dir: Path, cache_dir: Path | None) -> tuple[torch.nn.Module, Iterator, torch.Tensor, str]:
    """The run's model (its trained part), (input, mirrored input) validation batches, labels and precision."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    card = run.read_card()
    model = load_network(card.architecture, card.num_classes, run.file(BEST_WEIGHTS))
    splits = run_splits(cfg, RunDir(run_dir).read_split())
    val = splits.val
    device = torch.device("cpu")
    precision = resolve_precision(cfg.precision, device)
    if isinstance(model, TransferModel):
        cfg.cache_dir, cfg.progress = str(cache_dir or cfg.cache_dir), False
        cache = activation_cache(cfg, model, device, precision)
        acts, mirrored = cache.get(val), cache.get(val, flip=True)
        batches = ((acts[i : i + 500].float(), mirrored[i : i + 500].float()) for i in range(0, len(val), 500))
        return model.tail.eval(), batches, val.labels, precision
    loader = BatchLoader(val, 500, splits.mean, splits.std, channels_last=cfg.channels_last)
    return model, ((x, x.flip(3)) for x, _ in loader), val.labels, precision


@torch.inference_mode()
def view_accuracies(run_dir: Path, cache_dir: Path | None) -> dict[str, float]:
    """Validation accuracy of each view set of ``VIEW_SETS`` for one run."""
    model, batches, labels, precision = input_batches(run_dir, cache_dir)
    names = ["centre", *SHIFTS]
    logits = {(name, m): [] for name in names for m in (False, True)}
    for x, mirrored in batches:
        for m, inputs in ((False, x), (True, mirrored)):
            for name in names:
                centre = name == "centre"
                view = inputs.contiguous(memory_format=torch.channels_last) if centre else shift(inputs, *SHIFTS[name])
                with autocast(torch.device("cpu"), precision):
                    logits[name, m].append(model(view).float())
    logits = {key: torch.cat(value) for key, value in logits.items()}
    results = {}
    for set_name, shifts in VIEW_SETS.items():
        combined = logits["centre", False]
        if shifts is not None:
            combined = (logits["centre", False] + logits["centre", True]) / 2
        if shifts:
            shifted = sum(logits[name, m] for name in shifts for m in (False, True)) / (2 * len(shifts))
            combined = (combined + shifted) / 2
        results[set_name] = (combined.argmax(1) == labels).float().mean().item()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--cache-dir", type=Path, help="activation cache of the transfer runs (default: their own)")
    args = parser.parse_args()
    start = time.perf_counter()
    runs = {}
    for run_dir in args.runs:
        runs[str(run_dir)] = view_accuracies(run_dir, args.cache_dir)
        print(run_dir, "  ".join(f"{name}: {acc:.2%}" for name, acc in runs[str(run_dir)].items()))
    path = write_result(
        "tta_views",
        {
            "benchmark": "tta_views",
            "model": ", ".join(str(r) for r in args.runs),
            "command": command_line(),
            "seed": None,  # each run's own seed and validation split
            "wall_seconds": round(time.perf_counter() - start, 1),
            "split": "validation",
            "val_accuracy": runs,
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
