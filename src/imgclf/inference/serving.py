"""What ``imgclf serve`` loads, on its loading thread once /health answers: the benchmarked row fastest to serve, or
PyTorch timed against onnxruntime on single images (OpenVINO when asked for), exporting a run without a current export
to the ONNX cache first. Every predictor is loaded for serving (``load_predictor(serving=True)``)."""

import sys
from pathlib import Path

import torch

from imgclf.artifacts.files import BENCHMARK, BEST_WEIGHTS
from imgclf.artifacts.runs import RunDir
from imgclf.core.errors import ImgclfError
from imgclf.core.io import cache_dir
from imgclf.core.onnx import openvino_installed
from imgclf.inference.load import is_current, load_predictor, resolve_model, row_predictor, run_onnx, weights_digest
from imgclf.inference.options import ONNX_RUNTIMES
from imgclf.inference.predictor import Predictor


def serving_predictor(source: str | Path, device: str = "cpu", runtime: str = "auto", say=None) -> Predictor:
    """The predictor ``imgclf serve`` runs. On a CPU, ``auto`` serves the row of the run's ``imgclf benchmark`` record
    fastest to serve, or else the runtime that answers single images fastest here (measured at start-up); a run
    without a current export of its own is exported to the ONNX cache first and checked against PyTorch. Where that
    export fails, PyTorch serves, with a warning. ``say``: called with a line for each step."""
    from imgclf.core.device import select_device

    say = say or (lambda line: None)
    path = Path(source).expanduser()
    cpu = select_device(device).type == "cpu"
    if runtime == "torch" or not path.is_dir() or not (cpu or runtime in ONNX_RUNTIMES):
        say(f"loading the model ({runtime})")
        return load_predictor(source, device, runtime, batch_size=1, serving=True)
    run = resolve_model(path, device, "torch").run  # checked before anything is exported
    if runtime == "auto" and (measured := benchmarked(run, say)) is not None:
        return measured
    try:
        onnx_path = run_onnx(run)
        if onnx_path is None:
            say(f"exporting the weights to ONNX, once (kept in {cache_dir('onnx')})")
            onnx_path = cached_export(run)
    except (ImgclfError, OSError) as exc:
        if runtime in ONNX_RUNTIMES:
            raise
        print(f"imgclf: warning: serving with PyTorch, the ONNX export failed: {exc}".splitlines()[0], file=sys.stderr)
        return load_predictor(source, device, "torch", batch_size=1, serving=True)
    say("loading the model" + (", timing the runtimes on single images" if runtime == "auto" else ""))
    return load_predictor(source, device, runtime, batch_size=1, onnx_path=onnx_path, serving=True)


SERVED_BATCH = 16  # images per batch the server forms under load (ResNet-20 at concurrency 32: serve_no_spin.json)


def serving_ms(row: dict) -> float:
    """Milliseconds a row of ``imgclf benchmark`` would take for a batch of ``SERVED_BATCH`` requests: its p50 at
    batch 1 plus the other images at its images/s — an idle server's single requests and a busy one's batches in one
    figure. Measured on ResNet-20 (benchmarks/results/serve_no_spin.json): onnxruntime int8, the lowest p50 at batch
    1 (0.25 against 0.37 ms in its benchmark.json), served 1,644 requests/s at concurrency 32 (p99 23 ms), OpenVINO
    bf16 2,105 (p99 20 ms). The images/s are the benchmark's (batch 64, onnxruntime spinning): an estimate."""
    return row["p50_ms"] + (SERVED_BATCH - 1) * 1000 / row["images_per_second"]


def served_row(rows: list[dict]) -> dict:
    """The benchmark row ``imgclf serve --runtime auto`` serves: the lowest :func:`serving_ms`."""
    return min(rows, key=serving_ms)


def benchmarked(run: RunDir, say) -> Predictor | None:
    """The predictor of the benchmarked row to serve (:func:`served_row`), among those whose files are still current
    and whose runtime is installed; None when the run has no such record (then the runtimes are timed at start-up)."""
    record = run.read_benchmark()
    if record is None:
        return None
    digest = weights_digest(run.file(BEST_WEIGHTS))
    if record["weights_sha1"] != digest:
        return None
    rows = [r for r in record["rows"] if r["runtime"] == "torch" or is_current(run.file(r["file"]), digest)]
    rows = [r for r in rows if r["runtime"] != "openvino" or openvino_installed()]
    if not rows:
        return None
    best = served_row(rows)
    say(
        f"loading {best['name']}, the fastest to serve in {BENCHMARK} (p50 {best['p50_ms']:.2f} ms at batch 1, "
        f"{best['images_per_second']:,.0f} images/s in batches)"
    )
    return row_predictor(run, "cpu", best["runtime"], best["precision"], best["file"], serving=True)


def cached_export(run) -> Path:
    """An ONNX export of ``run``'s weights in the user's cache (keyed by the weights), made now if missing and checked
    against PyTorch on random images (the run's test split stays unread)."""
    from imgclf.inference.export import export_run

    path = cache_dir("onnx") / f"{weights_digest(run.file(BEST_WEIGHTS))[:24]}.onnx"
    if not path.is_file():
        side = run.read_card().data_size if run.read_card() else 32
        images = torch.randint(
            0, 256, (64, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        export_run(run.path, path, images=images, images_from="random")
    return path
