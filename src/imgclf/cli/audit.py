"""`imgclf audit DATA`: its options and the command."""

import argparse
from pathlib import Path

from imgclf.cli.flags import DATA_HELP, LABEL_FORMAT_OPTIONS, add_config_flags
from imgclf.data.labelfile import LabelFormat


def add_audit_parser(sub) -> None:
    """The audit command's options."""
    audit = sub.add_parser("audit", help="suspected label errors, near copies across splits and strays of a dataset")
    audit.add_argument("data", metavar="DATA", help=DATA_HELP)
    add_config_flags(audit, LABEL_FORMAT_OPTIONS, defaults=True)
    audit.add_argument("--output", default="runs/audit", help="folder for audit.html, audit.csv and audit.json")
    audit.add_argument("--backbone", default="", help="timm model embedding the images (default: best installed)")
    audit.add_argument("--side", type=int, default=0, help="side images are embedded at (default: 224)")
    audit.add_argument("--folds", type=int, default=5, help="folds of the out-of-fold predictions (default: 5)")
    audit.add_argument(
        "--run",
        metavar="RUN",
        help="train this run's recipe once per fold for the out-of-fold "
        "predictions, instead of a linear model on the embeddings (k trainings: slower)",
    )
    audit.add_argument("--seed", type=int, default=0, help="seed of the folds and the calibration sample")
    audit.add_argument("--data-dir", help="CIFAR: folder holding the downloaded files")
    audit.add_argument("--cache-dir", help="folder of the embedding cache (default: ~/.cache/imgclf/activations)")
    audit.add_argument("--prepare-dir", help="folder of prepared folder datasets (default: ~/.cache/imgclf/prepared)")
    audit.add_argument("--no-progress", action="store_true", help="hide progress bars")


def command_audit(args: argparse.Namespace) -> None:
    from imgclf.audit import PAGE_NAME, run_audit

    options = dict(backbone=args.backbone, side=args.side, folds=args.folds, seed=args.seed, run=args.run)
    fmt, progress = LabelFormat.of(vars(args)), not args.no_progress
    folders = dict(cache_dir=args.cache_dir, prepare_dir=args.prepare_dir)
    s = run_audit(args.data, args.output, progress=progress, fmt=fmt, data_dir=args.data_dir, **folders, **options)
    print(
        f"{s['dataset']}: {s['images']:,} images; {s['label_issues']:,} suspected label errors, {s['leaks']:,} "
        f"near copies across splits, {s['near_duplicates']:,} within a split, {s['strays']:,} strays"
    )
    print(f"see {Path(args.output) / PAGE_NAME} (audit.csv feeds --exclude and --relabel)")
