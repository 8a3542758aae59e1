"""A first look at a dataset: sample images per class, class balance, per-channel mean and std, and for a folder
the sizes and modes of its raw image files."""

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from imgclf.core.io import write_json
from imgclf.data.balance import class_counts, imbalance_ratio
from imgclf.data.images import ImageSet, MappedImages, channel_stats
from imgclf.data.labelfile import DEFAULT_FORMAT, LabelFormat
from imgclf.data.multilabel import is_multilabel, label_cardinality, multi_hot
from imgclf.data.sources import is_builtin

GALLERY_CLASSES = 20  # the sample grid shows the first classes only; stats.json covers all
RAW_SAMPLE = 5000  # raw-file headers read for the size and mode statistics of a large folder


def folder_images(
    data: str,
    side: int,
    resize: str,
    prepare_dir: str | None,
    workers: int,
    progress: bool,
    fmt: LabelFormat = DEFAULT_FORMAT,
):
    """Every readable image of a folder or label file (all splits), its display name and the facts of its raw
    files."""
    from imgclf.data.files import scan_source, skipped_files
    from imgclf.data.prepare import prepare

    scan = scan_source(data, fmt)
    files, labels = scan.all_files, scan.all_labels
    prepared = prepare(scan.root, files, side, resize, prepare_dir, workers, progress)
    rows = np.array([i for i, reason in enumerate(prepared.reasons) if not reason], dtype=np.int64)
    every = multi_hot(labels, len(scan.classes)) if scan.task == "multilabel" else torch.tensor(labels)
    images = ImageSet(
        MappedImages(prepared.array, rows, prepared.key),
        every[torch.from_numpy(rows)],
        scan.classes,
    )
    raw = raw_file_stats(scan.root, files, seed=0)
    raw.update(layout=scan.layout, files=len(files), ignored_files=scan.ignored)
    raw.update(scan.notes)
    raw["skipped"] = skipped_files(scan, prepared.reasons)
    return images, scan.name, raw


def raw_file_stats(root: Path, files: list[str], seed: int = 0) -> dict:
    """Width, height, mode and format of the raw files (headers only; a sample of a large folder)."""
    from imgclf.data.decode import image_header
    from imgclf.data.files import sample

    picked = sample(files, RAW_SAMPLE, seed)
    sizes, modes, formats = [], Counter(), Counter()
    for header in filter(None, (image_header(root / name) for name in picked)):
        sizes.append(header[0])
        modes[header[1]] += 1
        formats[header[2]] += 1
    widths = np.array([w for w, _ in sizes] or [0])
    heights = np.array([h for _, h in sizes] or [0])
    return {
        "raw_files_read": len(sizes),
        "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
        "height": {"min": int(heights.min()), "median": float(np.median(heights)), "max": int(heights.max())},
        "modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
        "sizes": sizes,
    }


def explore(
    output: str | Path,
    data: str = "cifar10",
    data_dir: str | None = None,
    per_class: int = 8,
    seed: int = 0,
    side: int = 0,
    resize: str = "crop",
    prepare_dir: str | None = None,
    workers: int = 0,
    progress: bool = True,
    fmt: LabelFormat = DEFAULT_FORMAT,
) -> dict:
    """Write samples.png, class_distribution.png (and image_sizes.png for a folder) and stats.json into ``output``."""
    from imgclf.report import plots

    output = Path(output)
    raw = None
    if is_builtin(data):
        from imgclf.data.cifar import CIFAR_SOURCES, load_cifar

        images, name = load_cifar("train", data_dir, source=data), CIFAR_SOURCES[data][1]
    else:
        images, name, raw = folder_images(data, side or 64, resize, prepare_dir, workers, progress, fmt)
    classes = images.classes
    labels, multilabel = images.labels.numpy(), is_multilabel(images.labels)
    counts = class_counts(images.labels, len(classes)).tolist()
    rng = np.random.default_rng(seed)
    shown = classes[:GALLERY_CLASSES]
    members = [np.flatnonzero(labels[:, c] if multilabel else labels == c) for c in range(len(shown))]
    order = np.concatenate([rng.choice(m, min(per_class, len(m)), replace=False) for m in members]).astype(np.int64)
    captions = [
        " + ".join(classes[c] for c in np.flatnonzero(labels[i])) if multilabel else classes[labels[i]] for i in order
    ]
    plots.plot_gallery(images.images[order].numpy(), captions, output / "samples.png", columns=per_class)
    plots.plot_bars(classes, counts, output / "class_distribution.png", title=f"{name}: images per class")
    mean, std = channel_stats(images.images)
    per = dict(zip(classes, counts, strict=True))
    stats = {"dataset": name, "images": len(images), "classes": classes, "per_class": per}
    stats["imbalance_ratio"] = round(imbalance_ratio(torch.tensor(counts)), 2)
    if is_multilabel(images.labels):
        stats.update(task="multilabel", label_cardinality=round(label_cardinality(images.labels), 3))
    stats.update(mean=list(mean), std=list(std))
    if raw is not None:
        plots.plot_sizes(raw.pop("sizes"), output / "image_sizes.png", title=f"{name}: raw image sizes")
        stats["raw"] = raw
    write_json(output / "stats.json", stats)
    return stats
