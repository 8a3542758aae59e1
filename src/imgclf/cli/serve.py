"""`imgclf serve` and `imgclf predict`: their options and commands."""

import argparse
import math
import sys

from imgclf.cli.flags import RAW_HELP
from imgclf.core.errors import ImgclfError
from imgclf.inference.options import OUTPUT_FORMATS, RUNTIMES, Limits


def add_predict_parser(sub) -> None:
    """`imgclf predict`'s options."""
    predict = sub.add_parser("predict", help="top-k classes of image files, folders and globs with a trained model")
    predict.add_argument("model", metavar="RUN_DIR|MODEL", help="run directory, its best.safetensors or an .onnx file")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (recursive) or globs")
    predict.add_argument("--top-k", type=int, default=5, help="classes shown per image (default: 5)")
    predict.add_argument("--format", default="table", choices=OUTPUT_FORMATS, help="output format (default: table)")
    predict.add_argument(
        "--output",
        dest="output_file",
        metavar="FILE",
        help="write to FILE instead of stdout (it grows as FILE.partial, renamed when every row is written)",
    )
    predict.add_argument(
        "--resume", action="store_true", help="continue an interrupted --output FILE.partial (csv or jsonl)"
    )
    predict.add_argument(
        "--explain", metavar="DIR", help="write each image's Grad-CAM heatmap for its top class into DIR (PNG overlays)"
    )
    predict.add_argument("--raw", action="store_true", help=RAW_HELP)
    predict.add_argument("--tta", action="store_true", help="average with the mirrored image's prediction")
    predict.add_argument("--batch-size", type=int, default=0, help="images per batch (default: by input side)")
    predict.add_argument("--strict", action="store_true", help="exit with status 1 when any file is skipped")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--runtime", default="auto", choices=RUNTIMES, help="auto: see README; openvino: imgclf[openvino]"
    )
    predict.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    predict.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray Data (pip install 'imgclf[ray]'): on this machine, or a cluster's ADDRESS (auto, "
        "ray://HOST:10001); --output names a folder of CSV or Parquet files",
    )
    predict.add_argument("--ray-actors", type=int, default=1, help="copies of the model with --ray (default: 1)")


def command_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ImgclfError(f"--top-k must be a positive integer, got {args.top_k}")
    if args.batch_size < 0:
        raise ImgclfError(f"--batch-size must be a positive integer, got {args.batch_size}")
    options = dict(top_k=args.top_k, calibrated=not args.raw, flip_tta=args.tta, batch_size=args.batch_size)
    if args.ray is not None:
        return command_ray_predict(args, options)
    if args.format == "parquet":
        raise ImgclfError("--format parquet is written by --ray; plain predict writes table, csv or jsonl")
    from imgclf.inference.explain import explain_folder, load_explainer
    from imgclf.inference.load import load_predictor, runtime_note
    from imgclf.inference.predict import run_predict

    folder = explain_folder(args.explain) if args.explain is not None else None
    predictor = load_predictor(args.model, args.device, args.runtime, batch_size=args.batch_size)
    if predictor.temperature is None and not args.raw:
        print("imgclf: note: the run has not been evaluated, so probabilities are not calibrated", file=sys.stderr)
    explain = (load_explainer(args.model, predictor), folder) if folder is not None else None
    progress = False if args.no_progress else None
    options.update(progress=progress, resume=args.resume, explain=explain)
    done, skipped = run_predict(predictor, args.images, args.format, args.output_file, **options)
    where = f" into {args.output_file}" if args.output_file else ""
    status = predicted(args, done, skipped, f"{where} with {predictor.card.model} ({runtime_note(predictor)})")
    if explain is not None:
        record = explain[0].record()
        print(f"imgclf: heatmaps ({record['method']} at {record['layer']}) written to {folder}", file=sys.stderr)
    return status


def predicted(args: argparse.Namespace, done: int, skipped: int, how: str) -> int:
    """Say on stderr what predict did (``how``: where to and with what); the exit status: 1 with --strict when a file
    was skipped."""
    skips = f"; skipped {skipped:,} (marked in the output)" if skipped else ""
    print(f"imgclf: predicted {done:,} image(s){how}{skips}", file=sys.stderr)
    return 1 if args.strict and skipped else 0


def command_ray_predict(args: argparse.Namespace, options: dict) -> int:
    """`imgclf predict … --ray`: the same predictions on Ray Data (``options``: plain predict's top-k, calibration,
    TTA and batch size), into a folder of CSV or Parquet files."""
    if args.output_file is None:
        raise ImgclfError("--ray writes into a folder: name it with --output DIR")
    for flag, value in (("--explain", args.explain), ("--resume", args.resume)):
        if value:
            raise ImgclfError(f"{flag} runs without --ray")
    if args.ray_actors < 1:
        raise ImgclfError(f"--ray-actors must be a positive integer, got {args.ray_actors}")
    from imgclf.inference.ray_predict import ray_predict

    kind = "csv" if args.format == "table" else args.format
    done, skipped = ray_predict(
        args.model, args.images, args.output_file, args.ray, kind, args.ray_actors, args.runtime, **options
    )
    return predicted(args, done, skipped, f" on Ray into {args.output_file} ({kind} files)")


# imgclf serve's limit options: flag → (Limits field, type, help); the defaults are Limits' own
SERVE_LIMITS = {
    "--top-k": ("top_k", int, "classes returned per image"),
    "--max-body-mb": ("max_body_bytes", float, "request body limit in MB"),
    "--max-pixels": ("max_pixels", int, "pixels per image (larger: 413, refused from the header)"),
    "--max-images": ("max_images", int, "images per request"),
    "--timeout": ("timeout_seconds", float, "seconds a request may take"),
    "--header-timeout": ("header_timeout_seconds", float, "seconds a client may take to send a request's headers"),
    "--max-concurrency": ("max_concurrency", int, "requests handled at once (more: 503)"),
    "--batch-window-ms": ("batch_window_ms", float, "wait this long for more requests before predicting a batch"),
    "--max-batch": ("max_batch", int, "images per inference batch"),
}
MEGABYTE = 1_000_000


def add_serve_parser(sub) -> None:
    """`imgclf serve`'s options: where to listen, and each limit of :class:`~imgclf.inference.options.Limits`."""
    serve = sub.add_parser("serve", help="serve a trained model over HTTP: JSON API, metrics and a page for people")
    serve.add_argument("model", metavar="RUN_DIR|MODEL", help="run directory, its best.safetensors or an .onnx file")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    serve.add_argument(
        "--runtime", default="auto", choices=RUNTIMES, help="auto: see README; openvino: imgclf[openvino]"
    )
    serve.add_argument("--raw", action="store_true", help=RAW_HELP)
    defaults = Limits()
    for option, (field, kind, text) in SERVE_LIMITS.items():
        default = getattr(defaults, field)
        default = default / MEGABYTE if option == "--max-body-mb" else default
        shown = f"{default:,}" if isinstance(default, int) else f"{default:g}"
        serve.add_argument(option, type=kind, default=default, help=f"{text} (default: {shown})")


def serve_limits(args: argparse.Namespace) -> Limits:
    """The server's limits from `imgclf serve`'s options, each checked."""
    values = {}
    for option, (field, _, _) in SERVE_LIMITS.items():
        value = getattr(args, option[2:].replace("-", "_"))
        window = option == "--batch-window-ms"  # may be 0 (off); every other limit must be positive
        if not (math.isfinite(value) and (0 <= value <= 1000 if window else value > 0)):
            raise ImgclfError(f"{option} must be {'in 0..1000' if window else 'a positive number'}, got {value}")
        values[field] = round(value * MEGABYTE) if option == "--max-body-mb" else value
    if not 0 <= args.port <= 65535:
        raise ImgclfError(f"--port must be in 0..65535, got {args.port}")
    return Limits(**values)


def command_serve(args: argparse.Namespace) -> None:
    limits = serve_limits(args)
    from imgclf.inference.serve import serve

    serve(args.model, args.host, args.port, limits, args.device, args.runtime, raw=args.raw)
