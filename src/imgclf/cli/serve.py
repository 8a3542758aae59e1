"""`imgclf serve` and `imgclf predict`: their options and the serve command."""

import argparse
import math

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
    predict.add_argument("--raw", action="store_true", help=RAW_HELP)
    predict.add_argument("--tta", action="store_true", help="average with the mirrored image's prediction")
    predict.add_argument("--batch-size", type=int, default=0, help="images per batch (default: by input side)")
    predict.add_argument("--strict", action="store_true", help="exit with status 1 when any file is skipped")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--runtime", default="auto", choices=RUNTIMES, help="auto: the faster one (see README)")
    predict.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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
    serve.add_argument("--runtime", default="auto", choices=RUNTIMES, help="auto: the faster one (see README)")
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
