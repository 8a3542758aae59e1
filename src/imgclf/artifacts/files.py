"""The names of a run directory's files, and the check that a folder is a run: importable without torch, so a server
can check what it was given before it imports anything heavy."""

from pathlib import Path

from imgclf.core.errors import ImgclfError

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
SUMMARY = "summary.json"
METRICS = "metrics.json"
MODEL_CARD = "model.json"
BEST_WEIGHTS = "best.safetensors"
ONNX_MODEL = "model.onnx"
INT8_MODEL = "model.int8.onnx"
BENCHMARK = "benchmark.json"
SPLIT = "split.json"
DATA = "data.json"
SKIPPED = "skipped.json"
REPORT = "report.html"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"
TENSORBOARD = "tensorboard"
LOCK = ".lock"


def run_config(folder: Path) -> Path:
    """The config file of the run directory ``folder``; a one-line error when it has none (the folder is no run)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ImgclfError(f"not a run directory (no {CONFIG}): {folder}")
    return path
