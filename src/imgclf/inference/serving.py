"""What ``imgclf serve`` loads, on its loading thread once /health answers: the run's fastest benchmarked row, or
PyTorch timed against onnxruntime on single images, exporting a run without a current export to the ONNX cache
first."""

import sys
from pathlib import Path

import torch

from imgclf.artifacts.files import BENCHMARK, BEST_WEIGHTS
from imgclf.artifacts.runs import RunDir
from imgclf.core.errors import ImgclfError
from imgclf.core.io import cache_dir
from imgclf.inference.load import is_current, load_predictor, resolve_model, run_onnx, weights_digest
from imgclf.inference.predictor import Predictor


def serving_predictor(source: str | Path, device: str = "cpu", runtime: str = "auto", say=None) -> Predictor:
    """The predictor ``imgclf serve`` runs. On a CPU, ``auto`` serves a run through PyTorch or onnxruntime, whichever
    answers single images faster here (measured at start-up); a run without a current export of its own is exported
    to the ONNX cache first and checked against PyTorch. Where that export fails, PyTorch serves, with a warning.
    ``say``: called with a line for each step."""
    from imgclf.core.device import select_device

    say = say or (lambda line: None)
    path = Path(source).expanduser()
    cpu = select_device(device).type == "cpu"
    if runtime == "torch" or not path.is_dir() or not (cpu or runtime == "onnxruntime"):
        say(f"loading the model ({runtime})")
        return load_predictor(source, device, runtime, batch_size=1)
    run = resolve_model(path, device, "torch").run  # checked before anything is exported
    if runtime == "auto" and (measured := benchmarked(run, say)) is not None:
        return measured
    try:
        onnx_path = run_onnx(run)
        if onnx_path is None:
            say(f"exporting the weights to ONNX, once (kept in {cache_dir('onnx')})")
            onnx_path = cached_export(run)
    except (ImgclfError, OSError) as exc:
        if runtime == "onnxruntime":
            raise
        print(f"imgclf: warning: serving with PyTorch, the ONNX export failed: {exc}".splitlines()[0], file=sys.stderr)
        return load_predictor(source, device, "torch", batch_size=1)
    say("loading the model" + (", timing PyTorch against onnxruntime on single images" if runtime == "auto" else ""))
    return load_predictor(source, device, runtime, batch_size=1, onnx_path=onnx_path)


def benchmarked(run: RunDir, say) -> Predictor | None:
    """The predictor of the row ``imgclf benchmark`` measured fastest at batch 1 (lowest p50), among those whose files
    are still current; None when the run has no such record (then the runtimes are timed at start-up)."""
    record = run.read_benchmark()
    if record is None:
        return None
    digest = weights_digest(run.file(BEST_WEIGHTS))
    if record["weights_sha1"] != digest:
        return None
    rows = [r for r in record["rows"] if r["runtime"] == "torch" or is_current(run.file(r["file"]), digest)]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["p50_ms"])
    say(f"loading {best['name']}, the fastest at batch 1 in {BENCHMARK} (p50 {best['p50_ms']:.2f} ms)")
    if best["runtime"] == "torch":
        return load_predictor(run.path, "cpu", "torch", precision=best["precision"], batch_size=1)
    return load_predictor(run.file(best["file"]), "cpu", "onnxruntime", batch_size=1)


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
        export_run(run.path, path, images=images)
    return path
