"""Do the Grad-CAM maps point at what the network uses? Deletion (Petsiuk et al. 2018) on 1,000 CIFAR-10 test images.

    uv run python benchmarks/explain.py RUN_DIR [RUN_DIR …] [--images 1000] [--steps 32]

For each trained run and each of the first ``--images`` test images: the class the network predicts; its Grad-CAM
map (``imgclf.inference.explain``, what `imgclf predict --explain` draws) at the stored side; then the image's pixels
are removed most salient first, 1/``steps`` of them at a time, each removed pixel set to the test set's mean colour,
and the network's softmax probability of that class is read after each step. The deletion AUC is the mean of that
curve over the fraction removed (trapezoid, 0 … 1): lower means the map found the evidence sooner. Baselines: the
pixels in a random order (one permutation per image, seed 0) — which scatters the removed pixels, a kind of noise the
network has never seen, unlike the blobs a map removes —; another image's map (the maps shuffled between images: the
same smoothness and centre bias, nothing of this image); and this image's map least salient first. Ties in a map
are broken at random.

Also Adebayo et al. (2018)'s model randomisation on the same images: the mean Spearman rank correlation between the
trained network's maps and those of the same architecture with fresh random weights (seed 0).
Writes benchmarks/results/explain_MODEL.json (benchmark "explain": deletion_auc, random_deletion_auc).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_result


def deletion_curves(predictor, images: torch.Tensor, targets: np.ndarray, orders: np.ndarray, steps: int) -> np.ndarray:
    """Probability of each image's target class (N, steps + 1) as its pixels go, in ``orders`` (N, H·W), to the
    images' mean colour."""
    n, _, h, w = images.shape
    fill = images.float().mean(dim=(0, 2, 3)).round().to(torch.uint8).view(1, 3, 1, 1)
    ranks = torch.from_numpy(np.argsort(orders, axis=1)).view(n, 1, h, w)  # when each pixel goes
    curves = np.zeros((n, steps + 1), np.float32)
    rows = np.arange(n)
    for step in range(steps + 1):
        removed = ranks < round(step * h * w / steps)
        kept = torch.where(removed, fill, images)
        logits = np.concatenate([predictor.logits(b) for b in kept.split(500)])
        curves[:, step] = predictor.probabilities(logits, calibrated=False)[rows, targets]
    return curves


def area(curves: np.ndarray) -> np.ndarray:
    """Each curve's area over the fraction removed, 0 … 1 (trapezoid)."""
    return np.trapezoid(curves, np.linspace(0, 1, curves.shape[1]), axis=1)


def most_salient_first(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices of each map, largest value first, ties in random order."""
    flat = maps.reshape(len(maps), -1)
    jitter = rng.random(flat.shape) * 1e-6  # below any real difference of maps scaled to [0, 1]
    return np.argsort(-(flat + jitter), axis=1, kind="stable")


def measure(run: Path, count: int, steps: int, data_dir: str | None) -> dict:
    from imgclf.data.cifar import load_cifar10
    from imgclf.inference.explain import Explainer
    from imgclf.inference.load import load_predictor
    from imgclf.models.transfer import TransferModel, build_network

    start = time.perf_counter()
    predictor = load_predictor(run, "cpu", "torch")
    test = load_cifar10("test", data_dir)
    images, labels = test.images[:count], test.labels[:count].numpy()
    logits = np.concatenate([predictor.logits(b) for b in images.split(500)])
    targets = logits.argmax(1)
    explainer = Explainer(predictor.transfer or predictor.network, predictor.card)
    maps = np.concatenate([explainer.maps(images[s : s + 100], targets[s : s + 100]) for s in range(0, count, 100)])
    rng = np.random.default_rng(0)
    salient = deletion_curves(predictor, images, targets, most_salient_first(maps, rng), steps)
    side = images.shape[-1]
    random_orders = np.stack([rng.permutation(side * side) for _ in range(count)])
    random = deletion_curves(predictor, images, targets, random_orders, steps)
    shuffled_maps = maps[np.roll(np.arange(count), 1)]  # each image gets the previous image's map
    shuffled = deletion_curves(predictor, images, targets, most_salient_first(shuffled_maps, rng), steps)
    least = deletion_curves(predictor, images, targets, most_salient_first(maps, rng)[:, ::-1], steps)
    torch.manual_seed(0)
    fresh = build_network(predictor.card.architecture, predictor.card.num_classes)
    fresh_network = fresh.network if isinstance(fresh, TransferModel) else fresh
    fresh_maps = np.concatenate(
        [
            Explainer(fresh_network, predictor.card).maps(images[s : s + 100], targets[s : s + 100])
            for s in range(0, count, 100)
        ]
    )
    rho = [stats.spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(maps, fresh_maps, strict=True)]
    ours, theirs = area(salient), area(random)
    return {
        "benchmark": "explain",
        "model": predictor.card.model,
        "run": str(run),
        "command": command_line(),
        "seed": 0,
        "method": explainer.record(),
        "precision": predictor.precision,
        "input_size": predictor.card.input_size,
        "images": count,
        "steps": steps,
        "accuracy_on_these_images": float((targets == labels).mean()),
        "deletion_auc": float(ours.mean()),
        "random_deletion_auc": float(theirs.mean()),
        "ratio_to_random": float(ours.mean() / theirs.mean()),
        "images_below_random": float((ours < theirs).mean()),
        "shuffled_maps_deletion_auc": float(area(shuffled).mean()),
        "least_salient_first_deletion_auc": float(area(least).mean()),
        "images_below_shuffled": float((ours < area(shuffled)).mean()),
        "deletion_auc_sem": float(ours.std(ddof=1) / np.sqrt(count)),
        "random_deletion_auc_sem": float(theirs.std(ddof=1) / np.sqrt(count)),
        "mean_curve": salient.mean(0).round(4).tolist(),
        "random_mean_curve": random.mean(0).round(4).tolist(),
        "shuffled_maps_mean_curve": shuffled.mean(0).round(4).tolist(),
        "randomised_model_spearman": None if np.isnan(rho).all() else float(np.nanmean(rho)),  # None: all maps 0
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    for run in args.runs:
        record = measure(run, args.images, args.steps, args.data_dir)
        name = f"explain_{args.tag or record['model']}"
        write_result(name, record)
        print(
            f"{record['model']}: deletion AUC {record['deletion_auc']:.4f} against random "
            f"{record['random_deletion_auc']:.4f} ({record['ratio_to_random']:.2f}×), another image's map "
            f"{record['shuffled_maps_deletion_auc']:.4f}, least salient first "
            f"{record['least_salient_first_deletion_auc']:.4f}; randomised-model Spearman "
            f"{record['randomised_model_spearman']} → benchmarks/results/{name}.json"
        )


if __name__ == "__main__":
    main()
