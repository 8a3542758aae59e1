"""``imgclf benchmark RUN_DIR``: which format to ship — each runtime × precision of a run's model, side by side.

Rows: PyTorch fp32 and bf16 (bf16 where the CPU computes it natively, or on a GPU), onnxruntime fp32 (``model.onnx``)
and int8 (``model.int8.onnx``, behind its accuracy gate), and OpenVINO fp32, bf16 and int8 of the same two files where
the optional ``imgclf[openvino]`` is installed; a missing export is made first, with its own check (on validation
images). Each row measures, on the validation split (the test split stays unread): top-1 accuracy; latency at batch
1, p50 and p99 over ``LATENCY_CALLS`` single images after a warm-up; images/s at ``batch_size``; and the file's size.
The table is printed and written to ``RUN/benchmark.json`` with the weights' digest, host and versions; ``imgclf
serve --runtime auto`` then serves the row fastest for a server's batches (inference/serving.py) instead of timing the
runtimes at start-up.
"""

import time
from collections.abc import Iterator

import numpy as np
import onnxruntime
import torch

from imgclf.artifacts.files import BEST_WEIGHTS, INT8_MODEL, ONNX_MODEL
from imgclf.artifacts.runs import RunDir
from imgclf.core.device import cpu_has_native_bf16, describe_device, select_device
from imgclf.core.errors import ImgclfError
from imgclf.core.onnx import openvino_installed, openvino_version
from imgclf.data.images import ImageSet
from imgclf.inference.export import export_run, located_splits
from imgclf.inference.load import is_current, row_predictor, run_card, weights_digest
from imgclf.inference.options import MAX_DROP, PARITY_IMAGES
from imgclf.inference.predictor import Predictor
from imgclf.inference.quantize import gate_accuracy, spread
from imgclf.inference.serving import served_row

LATENCY_CALLS = 300  # single-image calls timed per row
THROUGHPUT_SECONDS = 1.0  # per row, at the batch size
VALIDATION_IMAGES = 10_000  # at most, spread over the split


def latency_ms(predictor: Predictor, images: torch.Tensor, calls: int = 0) -> dict[str, float]:
    """p50 and p99 milliseconds of ``calls`` (0: ``LATENCY_CALLS``) single-image predictions (cycling through
    ``images``), after 20 warm-up calls."""
    calls = calls or LATENCY_CALLS
    for i in range(20):
        predictor.logits(images[i % len(images)][None])
    times = []
    for i in range(calls):
        start = time.perf_counter()
        predictor.logits(images[i % len(images)][None])
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


def images_per_second(predictor: Predictor, images: torch.Tensor, batch_size: int) -> float:
    """Images/s of ``predictor`` on batches of ``batch_size`` for about ``THROUGHPUT_SECONDS`` (after one batch)."""
    batch = images[:batch_size] if len(images) >= batch_size else images[torch.arange(batch_size) % len(images)]
    predictor.logits(batch)
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < THROUGHPUT_SECONDS:
        predictor.logits(batch)
        count += len(batch)
    return round(count / (time.perf_counter() - start), 1)


def ensure_exports(
    run: RunDir, digest: str, val: ImageSet, data: str | None, data_dir: str | None, max_drop: float
) -> dict[str, str]:
    """Export the run to ONNX and int8 where it has no file current with the weights of ``digest`` (the fp32 file's
    parity checked on validation images, the int8 file gated); why a format is missing, by its file name (an int8
    model refused, say)."""
    missing, check = {}, val.images[0 : min(len(val), PARITY_IMAGES)]
    for name, drop in ((ONNX_MODEL, None), (INT8_MODEL, max_drop)):
        path = run.file(name)
        if is_current(path, digest):
            continue
        try:
            export_run(run.path, path, data, data_dir, images=check, max_drop=drop, images_from="validation")
        except ImgclfError as exc:
            missing[name] = str(exc)
    return missing


def candidates(device: str) -> list[tuple[str, str, str, str]]:
    """(row name, runtime, precision, the run's file) of each row this machine can run (each file checked later)."""
    rows = [("torch fp32", "torch", "fp32", BEST_WEIGHTS)]
    if select_device(device).type == "cuda" or cpu_has_native_bf16():
        rows.append(("torch bf16", "torch", "bf16", BEST_WEIGHTS))
    rows += [
        ("onnxruntime fp32", "onnxruntime", "fp32", ONNX_MODEL),
        ("onnxruntime int8", "onnxruntime", "int8", INT8_MODEL),
    ]
    if openvino_installed():
        rows.append(("openvino fp32", "openvino", "fp32", ONNX_MODEL))
        if cpu_has_native_bf16():
            rows.append(("openvino bf16", "openvino", "bf16", ONNX_MODEL))
        rows.append(("openvino int8", "openvino", "int8", INT8_MODEL))
    return rows


def row_predictors(
    run: RunDir, device: str, missing: dict[str, str]
) -> Iterator[tuple[tuple[str, str, str, str], Predictor]]:
    """Each row of :func:`candidates` whose file is not in ``missing`` (file or row name → why), with its predictor;
    a row whose runtime cannot load its file (a model OpenVINO cannot compile, say) is added to ``missing`` and the
    other rows still count."""
    for row in candidates(device):
        name, runtime, precision, file = row
        if file in missing:
            continue
        try:
            predictor = row_predictor(run, device, runtime, precision, file)
        except ImgclfError as exc:
            missing[name] = str(exc)
            continue
        yield row, predictor


def measure(predictor: Predictor, val: ImageSet, batch_size: int) -> dict:
    """One row's figures: validation accuracy, batch-1 latency and images/s at ``batch_size``."""
    sample = val.images[0 : min(len(val), max(batch_size, 64))]
    row = {"val_accuracy": round(gate_accuracy(predictor, val), 6)}
    row.update(latency_ms(predictor, sample))
    row["images_per_second"] = images_per_second(predictor, sample, batch_size)
    return row


def benchmark_run(
    run_dir: str, device: str = "cpu", batch_size: int = 64, data: str | None = None, data_dir: str | None = None
) -> dict:
    """Measure every row of a run (see the module's docstring) and write ``RUN/benchmark.json``; the record."""
    run = RunDir(run_dir)
    cfg, card = run.read_config(), run_card(run)
    splits = located_splits(run, cfg, card, data, data_dir)
    if not len(splits.val):
        raise ImgclfError(f"{run.path} has no validation split to measure accuracy on (trained with --val-fraction 0)")
    val = spread(splits.val, VALIDATION_IMAGES)
    digest = weights_digest(run.file(BEST_WEIGHTS))
    missing = ensure_exports(run, digest, val, data, data_dir, MAX_DROP)
    rows = []
    for (name, runtime, precision, file), predictor in row_predictors(run, device, missing):
        row = {"name": name, "runtime": runtime, "precision": precision, "file": file}
        rows.append({**row, "bytes": run.file(file).stat().st_size, **measure(predictor, val, batch_size)})
    best = min(rows, key=lambda r: r["p50_ms"])
    record = {
        "model": card.model,
        "weights_sha1": digest,
        "device": describe_device(select_device(device)),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino_version(),
        "validation_images": len(val),
        "batch_size": batch_size,
        "latency_calls": LATENCY_CALLS,
        "rows": rows,
        "missing": missing,
        "fastest_at_batch_1": best["name"],
        "served": served_row(rows)["name"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run.write_benchmark(record)
    return record
