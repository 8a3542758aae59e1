"""Command-line entry point: ``imgclf COMMAND`` — train, evaluate, predict, export, benchmark, serve, explore, compare,
study, audit.

imgclf train --model resnet20 --epochs 30              # train, then evaluate on the test split
imgclf train --config resnet20 --lr 0.1   # a bundled recipe or YAML file, overridden by flags
imgclf train --resume runs/resnet20-20261124-151500    # continue an interrupted run
imgclf evaluate runs/resnet20-20261124-151500
imgclf predict runs/resnet20-20261124-151500 photos/ --top-k 3
imgclf export runs/resnet20-20261124-151500             # RUN/model.onnx, checked against PyTorch
imgclf export runs/resnet20-20261124-151500 --int8      # RUN/model.int8.onnx, gated on validation accuracy
imgclf benchmark runs/resnet20-20261124-151500          # each runtime × precision: accuracy, latency, size
imgclf serve runs/resnet20-20261124-151500              # http://127.0.0.1:8000
imgclf audit photos/                                    # suspected label errors, leaks and strays
imgclf models

The shared flags live in cli/flags.py, predict's and serve's options and commands in cli/serve.py, audit's in
cli/audit.py, benchmark's in cli/benchmark.py.
"""

import argparse
import dataclasses
import json
import math
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from imgclf.cli.audit import add_audit_parser, command_audit
from imgclf.cli.benchmark import add_benchmark_parser, command_benchmark
from imgclf.cli.flags import ABSTAIN_OPTIONS, DATA_HELP, LABEL_FORMAT_OPTIONS, MOVED_HELP, add_config_flags
from imgclf.cli.serve import add_predict_parser, add_serve_parser, command_predict, command_serve, serve_limits
from imgclf.config.checks import MAX_IMAGE_SIDE
from imgclf.config.files import CONFIG_DIR, load_config_file
from imgclf.config.options import RUNTIME_OPTIONS
from imgclf.core.cli import OneLineErrorParser, describe_os_error
from imgclf.core.errors import ImgclfError, one_line
from imgclf.core.io import check_writable_folder
from imgclf.data.labelfile import LabelFormat
from imgclf.data.policies import IMBALANCED, RESIZE_POLICIES, below_threshold
from imgclf.inference.options import EXPORT_FORMATS, MAX_DROP, PARITY_IMAGES

__all__ = ["build_parser", "main", "serve_limits"]

EXPLORE_MAX_PER_CLASS = 64
RESUME_HINT = "resume a training run with `imgclf train --resume RUN_DIR` (also under another world size)"


class Terminated(BaseException):
    """SIGTERM arrived (torchrun stopping the ranks of a failed run, a scheduler ending a job); like
    KeyboardInterrupt, no ``except Exception`` of the code it interrupts may swallow it."""


def raise_terminated(signum, frame) -> NoReturn:
    raise Terminated


def check_explore_args(args: argparse.Namespace) -> None:
    """One-line errors for `imgclf explore` options outside their range, before any data loads."""
    if not 1 <= args.per_class <= EXPLORE_MAX_PER_CLASS:
        raise ImgclfError(f"--per-class must be in 1..{EXPLORE_MAX_PER_CLASS}, got {args.per_class}")
    if not 0 <= getattr(args, "data_size", 0) <= MAX_IMAGE_SIDE:
        raise ImgclfError(f"--data-size must be in 0..{MAX_IMAGE_SIDE} (0: the default), got {args.data_size}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="imgclf", description="Train, evaluate and compare image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    train = sub.add_parser("train", help="train a model on CIFAR-10 or a folder of images (then evaluate it)")
    train.add_argument("--config", help="YAML file of options (flags override it)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    add_config_flags(train)
    evaluate = sub.add_parser("evaluate", help="evaluate a run's best checkpoint on the test split")
    evaluate.add_argument("run_dir", help="run directory written by `imgclf train`")
    evaluate.add_argument("--data-dir", help="CIFAR runs: folder holding the downloaded files (default: the run's)")
    evaluate.add_argument("--data", help=MOVED_HELP)
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--tta", action="store_true", help="also report flip test-time augmentation, separately")
    evaluate.add_argument("--exclude", metavar="CSV", help="files to leave out, e.g. test images an audit found leaked")
    evaluate.add_argument("--relabel", metavar="CSV", help="files and their corrected labels (file, new_label)")
    add_config_flags(evaluate, ABSTAIN_OPTIONS)
    add_predict_parser(sub)
    export = sub.add_parser("export", help="export a run's model (ONNX), checked against PyTorch on validation images")
    export.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `imgclf train`")
    export.add_argument("--format", default="onnx", choices=EXPORT_FORMATS, help="export format (default: onnx)")
    export.add_argument("--output", dest="output_file", metavar="FILE", help="where to write (default: RUN/model.onnx)")
    export.add_argument(
        "--check-images", type=int, default=PARITY_IMAGES, help=f"images of the parity check ({PARITY_IMAGES:,})"
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="onnxruntime static int8 quantization (QDQ, per-channel weights) calibrated on training images, refused "
        "when validation accuracy drops more than --max-drop points (default output: RUN/model.int8.onnx)",
    )
    export.add_argument(
        "--max-drop", type=float, default=MAX_DROP, help=f"--int8: points of accuracy it may lose ({MAX_DROP:g})"
    )
    export.add_argument("--data", help=MOVED_HELP)
    export.add_argument("--data-dir", help="CIFAR runs: folder holding the downloaded files")
    add_serve_parser(sub)
    add_benchmark_parser(sub)
    explore = sub.add_parser("explore", help="sample grid per class, class distribution, per-channel mean/std")
    explore.add_argument("--data", default="cifar10", help=DATA_HELP)
    add_config_flags(explore, LABEL_FORMAT_OPTIONS, defaults=True)
    explore.add_argument("--data-dir", help="CIFAR: folder holding the downloaded files")
    explore.add_argument(
        "--data-size", type=int, default=0, help="side the sample images are prepared at (0: 64 for a folder)"
    )
    explore.add_argument("--resize", default="crop", choices=RESIZE_POLICIES, help="folder images to squares")
    explore.add_argument("--output", default="runs/explore", help="folder for the figures and stats.json")
    explore.add_argument("--per-class", type=int, default=8, help="sample images shown per class")
    add_audit_parser(sub)
    comp = sub.add_parser("compare", help="results table, impact of each step and figures across evaluated runs")
    comp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated run directories")
    comp.add_argument("--order", nargs="+", metavar="NAME", help="run or model names in the order of the study")
    comp.add_argument("--output", default="runs/comparison", help="folder for the tables and figures")
    study = sub.add_parser("study", help="train, evaluate and compare every run of a study preset")
    study.add_argument("--preset", default="reference", help="bundled preset name or YAML file (default: reference)")
    study.add_argument("--quick", action="store_true", help="the quick preset: a first look in minutes")
    study.add_argument("--output", default="runs/study", help="folder of the study's runs and comparison")
    study.add_argument("--data", help=f"{DATA_HELP}: every run trains on it (default: cifar10)")
    study.add_argument("--data-dir", help="CIFAR: folder holding the downloaded files")
    study.add_argument("--exclude", metavar="CSV", help="files every run leaves out (audit.csv or any file list)")
    study.add_argument("--relabel", metavar="CSV", help="files and their new labels for every run (file, new_label)")
    study.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an option of every run"
    )
    study.add_argument(
        "--add", action="append", default=[], metavar="RECIPE", help="one more run: a bundled recipe or config file"
    )
    study.add_argument("--tta", action="store_true", help="also report flip test-time augmentation")
    study.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub.add_parser("models", help="list the available models with their parameter counts")
    return parser


def command_train(args: argparse.Namespace) -> None:
    from imgclf.artifacts.runs import new_run_dir
    from imgclf.config.build import build_config
    from imgclf.core.device import select_device
    from imgclf.evaluation.evaluate import evaluate_run, load_run_config  # imported now: one code version per run
    from imgclf.report.run_report import render_evaluation
    from imgclf.training import distributed
    from imgclf.training.run import train_run

    options = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume")}
    if args.resume:
        run_dir = Path(args.resume)
        cfg = load_run_config(run_dir)
        allowed = RUNTIME_OPTIONS - {"output"}
        if set(options) - allowed:
            names = ", ".join("--" + k.replace("_", "-") for k in sorted(set(options) - allowed))
            raise ImgclfError(f"--resume continues the saved config; cannot change {names}")
        cfg = dataclasses.replace(cfg, **options).validate()
    else:
        cfg = build_config(load_config_file(args.config) if args.config else {}, options)
    distributed.setup(select_device(cfg.device))
    if not args.resume:
        run_dir = distributed.broadcast(new_run_dir(cfg))  # under torchrun: rank 0's name (its clock) for all
    with distributed.lost_rank_errors(f"resume with `imgclf train --resume {run_dir}` (any number of processes)"):
        summary = train_run(cfg, run_dir, resume=bool(args.resume))
    distributed.teardown()
    if not distributed.is_main():  # rank 0 reports and evaluates
        return
    print(json.dumps(summary, indent=2))
    if cfg.evaluate:
        print_metrics(render_evaluation(evaluate_run(run_dir, cfg.data_dir, cfg.device, tta=cfg.tta)), run_dir)


def print_metrics(metrics: dict, run_dir: Path) -> None:
    """The headline numbers of an evaluation."""
    cal, scaled = metrics["calibration"], metrics["calibration_temperature_scaled"]
    if metrics.get("task") == "multilabel":
        print(
            f"{metrics['model']}: test mAP {metrics['map']:.4f}  macro F1 {metrics['macro_f1']:.4f}  micro F1 "
            f"{metrics['micro_f1']:.4f}  exact match {metrics['exact_match']:.4f}  Hamming loss "
            f"{metrics['hamming_loss']:.4f}  train mAP {metrics['train_map']:.4f}  ECE {cal['ece']:.4f} → "
            f"{scaled['ece']:.4f} (T={metrics['temperature']:.2f}; thresholds fitted on validation)"
        )
    else:
        print(
            f"{metrics['model']}: test accuracy {metrics['test_accuracy']:.4f}  "
            f"balanced {metrics['balanced_accuracy']:.4f}  loss {metrics['test_loss']:.4f}  "
            f"train accuracy {metrics['train_accuracy']:.4f}  gap {metrics['overfitting_gap']:+.4f}  "
            f"macro F1 {metrics['macro']['f1']:.4f}  ECE {cal['ece']:.4f} → {scaled['ece']:.4f} "
            f"(T={metrics['temperature']:.2f})"
        )
    if "tta" in metrics:
        views = metrics["tta"].get("views", "flip")
        print(f"with TTA ({views}): test accuracy {metrics['tta']['test_accuracy']:.4f}")
    if (sel := metrics.get("selective")) and sel["abstaining"]:
        goal = f"; target risk {sel['target_risk']:.1%} on validation" if sel["target_risk"] is not None else ""
        print(
            f"abstaining ({below_threshold(sel)}: unknown): answers {sel['test']['coverage']:.1%} of the test "
            f"images with {sel['test']['risk']:.2%} errors (all: {sel['test']['full_coverage_risk']:.2%}){goal}"
        )
    print(f"metrics and figures written to {run_dir}")


def command_evaluate(args: argparse.Namespace) -> None:
    from imgclf.evaluation.evaluate import evaluate_run
    from imgclf.report.run_report import render_evaluation

    overrides = {k: getattr(args, k, None) for k in ("exclude", "relabel", *ABSTAIN_OPTIONS)}
    metrics = evaluate_run(args.run_dir, args.data_dir, args.device, args.tta, args.data, overrides)
    metrics = render_evaluation(metrics)
    print_metrics(metrics, Path(args.run_dir))


def command_export(args: argparse.Namespace) -> None:
    if args.check_images < 0:
        raise ImgclfError(f"--check-images must be 0 or more, got {args.check_images}")
    from imgclf.inference.export import export_run, parity_path

    if not (math.isfinite(args.max_drop) and 0 <= args.max_drop <= 100):
        raise ImgclfError(f"--max-drop must be a number of points from 0 to 100, got {args.max_drop}")
    max_drop = args.max_drop if args.int8 else None
    result = export_run(args.run_dir, args.output_file, args.data, args.data_dir, args.check_images, max_drop=max_drop)
    print(f"exported {result['model']} to {result['path']} ({result['bytes'] / 1e6:.1f} MB, {result['exporter']})")
    if "gate" in result:
        g = result["gate"]
        print(
            f"int8 gate on {g['images']:,} validation images: accuracy {g['fp32_accuracy']:.2%} (fp32) → "
            f"{g['int8_accuracy']:.2%} (int8), a drop of {g['drop_points']:.2f} points "
            f"(at most {g['max_drop_points']:g})"
        )
    if "parity" in result:
        p = result["parity"]
        print(
            f"parity with PyTorch on {p['images']:,} {p['split']} images: "
            f"max |Δlogit| {p['max_abs_diff']:.2e} "
            f"({p['relative_diff']:.1e} of the largest logit), top-1 agreement {p['top1_agreement']:.2%}"
            + (f", labels agreement {p['labels_agreement']:.2%}" if "labels_agreement" in p else "")
            + f" — stored in {parity_path(Path(result['path']))}"
        )


def command_explore(args: argparse.Namespace) -> None:
    check_explore_args(args)
    from imgclf.report.explore import explore

    fmt = LabelFormat.of(vars(args))
    stats = explore(
        args.output, args.data, args.data_dir, args.per_class, side=args.data_size, resize=args.resize, fmt=fmt
    )
    mean = ", ".join(f"{v:.4f}" for v in stats["mean"])
    std = ", ".join(f"{v:.4f}" for v in stats["std"])
    print(
        f"{stats['dataset']}: {stats['images']:,} images in {len(stats['classes'])} classes; mean ({mean}) std ({std})"
    )
    if stats["imbalance_ratio"] >= IMBALANCED:
        sizes = stats["per_class"].values()
        print(
            f"imbalanced: {max(sizes):,} images in the largest class, {min(sizes):,} in the smallest "
            f"({stats['imbalance_ratio']:.0f}:1); `imgclf train` balances it (--balance, default auto)"
        )
    print(f"figures and stats.json written to {args.output}")


def command_compare(args: argparse.Namespace) -> None:
    from imgclf.report.compare import compare, markdown_table

    runs = compare(args.run_dirs, args.output, args.order)
    print(markdown_table(runs), end="")
    print(f"results.md, results.csv, results.html and figures written to {args.output}")


def command_study(args: argparse.Namespace) -> None:
    from imgclf.study import parse_overrides, run_study

    overrides = parse_overrides(args.set)
    for key in ("data", "data_dir", "exclude", "relabel"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.no_progress:
        overrides["progress"] = False
    if args.tta:
        overrides["tta"] = True
    preset = "quick" if args.quick else args.preset
    from imgclf.training import distributed

    with distributed.lost_rank_errors("run the same command again: the study continues where it stopped"):
        record = run_study(preset, args.output, overrides, args.add)
    distributed.teardown()
    if not distributed.is_main():
        return
    comparison = Path(args.output) / "comparison"
    print((comparison / "results.md").read_text(), end="")
    print(f"study finished in {record['wall_seconds'] / 60:.1f} min; report: {comparison / 'report.html'}")


def command_models(args: argparse.Namespace) -> None:
    from imgclf.models import MODELS, count_parameters, create_model
    from imgclf.models.backbones import LITE_PACKAGES, create_backbone, package_weights_path

    print("from scratch:")
    for name in MODELS:
        print(f"  {name:<24} {count_parameters(create_model(name)):>12,} parameters")
    print("ImageNet backbones with installed weights (--pretrained works offline; any other timm name downloads):")
    for name in LITE_PACKAGES:
        if package_weights_path(name) is not None:
            print(f"  {name:<24} {count_parameters(create_backbone(name, 10)):>12,} parameters (10 classes)")
    print("bundled recipes (imgclf train --config NAME):")
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        headline = path.read_text().splitlines()[0].lstrip("# ").split(". ")[0].rstrip(".")
        print(f"  {path.stem:<24} {headline if len(headline) <= 100 else headline[:99] + '…'}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors print one line and return a non-zero exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed as one usage and one error line (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.command in ("train", "study", "evaluate"):  # long tensor work: keep freed memory for reuse
        from imgclf.core.device import reuse_freed_memory

        reuse_freed_memory()
    previous_handler = signal.getsignal(signal.SIGTERM)
    handles_signals = threading.current_thread() is threading.main_thread()  # only the main thread may set them
    if args.command in ("train", "study") and handles_signals:
        signal.signal(signal.SIGTERM, raise_terminated)  # a stopped run says how to resume it
    try:
        if getattr(args, "output", None) is not None:
            check_writable_folder(args.output, "--output")
        commands = {"train": command_train, "evaluate": command_evaluate, "explore": command_explore}
        commands.update(compare=command_compare, models=command_models, study=command_study, audit=command_audit)
        commands.update(predict=command_predict, export=command_export, serve=command_serve)
        commands.update(benchmark=command_benchmark)
        return commands[args.command](args) or 0
    except ImgclfError as exc:
        if handles_signals:  # a SIGTERM now (torchrun stopping the other ranks) adds nothing
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"imgclf: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"imgclf: stopped by SIGTERM ({RESUME_HINT})", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as exc:  # the last line of defence: a full disk, a read-only folder, a path that is a file…
        print(f"imgclf: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "imgclf: interrupted (resume a training run with `imgclf train --resume RUN_DIR`, a prediction into a file "
            "with `imgclf predict … --output FILE --resume`)",
            file=sys.stderr,
        )
        return 130
    finally:
        if handles_signals:
            signal.signal(signal.SIGTERM, previous_handler)
    return 0
