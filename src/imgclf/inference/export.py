"""``imgclf export RUN_DIR --format onnx``: the run's network as an ONNX file, checked against PyTorch on real images.

The graph takes normalised float32 images (batch, 3, side, side), the batch axis dynamic, and returns logits; the
model card (classes, input side, mean/std, resize policy, fitted temperature) goes into the ONNX metadata, so
``imgclf predict`` and ``imgclf serve`` need the file alone. PyTorch's current exporter (``torch.export``,
``dynamo=True``) runs first, the TorchScript exporter where it fails. timm's TF-ported EfficientNets pad "SAME" from
the input's shape at run time; the spatial side is fixed at export, so both exporters reduce that padding to
constants, and the parity check below covers those networks like any other.

Parity: the exported file and PyTorch (fp32) predict the same images — 1,000 spread over the validation split (the
training split where a run has none; the test split stays for the evaluation, read once), or all of them if fewer —
in batches of several sizes; max |Δlogit| (relative to the largest |logit|) must stay within 1e-3 and the top-1
classes must agree on every image, else the export fails and no model file is left behind. The figures are printed
and stored beside the file (``model.parity.json``).
"""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.artifacts.card import ModelCard
from imgclf.artifacts.files import BEST_WEIGHTS, INT8_MODEL, ONNX_MODEL
from imgclf.artifacts.runs import RunDir, run_splits
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError
from imgclf.core.io import atomic_write, write_json
from imgclf.core.onnx import OPSET, export_network
from imgclf.data.images import Splits
from imgclf.inference.load import CARD_KEY, WEIGHTS_KEY, load_network, run_card, weights_digest
from imgclf.inference.options import PARITY_IMAGES
from imgclf.inference.predictor import OnnxPredictor, TorchPredictor
from imgclf.inference.quantize import CALIBRATION_IMAGES, int8_gate, quantize_onnx, quantized_card, spread
from imgclf.models.transfer import TransferModel

TOLERANCE = 1e-3  # max |Δlogit| / max |logit|, fp32
CLOSE_CALL = 1e-4  # a multi-label probability this near its threshold: a decision rounding may flip
PARITY_BATCHES = (1, 7, 256)  # batch sizes the dynamic axis is checked at, in turn


def parity_path(model_path: Path) -> Path:
    """Where the parity figures of an exported model are stored: beside it."""
    return Path(model_path).with_suffix(".parity.json")


def write_metadata(path: Path, card: ModelCard, digest: str) -> None:
    """Store the model card and the weights' digest in the ONNX file's metadata."""
    import onnx

    model = onnx.load(str(path))
    values = {
        CARD_KEY: json.dumps(card.to_dict()),
        WEIGHTS_KEY: digest,
        "classes": json.dumps(card.classes),
        "input_size": str(card.input_size),
        "mean": json.dumps(card.mean),
        "std": json.dumps(card.std),
        "temperature": json.dumps(card.temperature),
    }
    del model.metadata_props[:]
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def check_parity(reference: TorchPredictor, exported: OnnxPredictor, images: torch.Tensor) -> dict:
    """Compare the logits of ``exported`` with those of ``reference`` on uint8 ``images``, in batches of several
    sizes."""
    ours, theirs, start, turn = [], [], 0, 0
    while start < len(images):
        batch = images[start : start + PARITY_BATCHES[turn % len(PARITY_BATCHES)]]
        ours.append(exported.logits(batch))
        theirs.append(reference.logits(batch))
        start, turn = start + len(batch), turn + 1
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    max_abs = float(np.abs(ours - theirs).max())
    scale = float(np.abs(theirs).max())
    relative = max_abs / max(scale, 1e-12)
    agreement = float((ours.argmax(1) == theirs.argmax(1)).mean())
    record = {
        "images": len(images),
        "max_abs_diff": max_abs,
        "max_abs_logit": scale,
        "relative_diff": relative,
        "top1_agreement": agreement,
        "tolerance": TOLERANCE,
        "passed": relative <= TOLERANCE and agreement == 1.0,
    }
    if reference.multilabel:  # the decisions at the thresholds, image by image, but those too close to call: the
        # thresholds were fitted at validation images' probabilities, where any rounding flips a decision
        gap = np.abs(reference.probabilities(theirs) - np.asarray(reference.card.thresholds))
        close = (gap < CLOSE_CALL).any(1)
        pairs = zip(exported.labels(ours), reference.labels(theirs), strict=True)
        same = [c or {k for k, _ in a} == {k for k, _ in b} for c, (a, b) in zip(close, pairs, strict=True)]
        record.update(labels_agreement=float(np.mean(same)), labels_too_close=int(close.sum()))
    return record


def located_splits(run: RunDir, cfg: TrainConfig, card: ModelCard, data: str | None, data_dir: str | None) -> Splits:
    """The run's splits, its data found where ``data`` (a moved folder) and ``data_dir`` (CIFAR's files) say."""
    if data:
        cfg = dataclasses.replace(cfg, data=str(Path(data).expanduser().resolve()))
    if data_dir:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    return run_splits(cfg, run.read_data_split(cfg), card)


def parity_images(splits: Splits, count: int) -> tuple[torch.Tensor, str]:
    """``count`` images spread evenly over the run's validation split (its training split where it has none; all of
    them if fewer), at the stored side, and the split's name."""
    name = "validation" if len(splits.val) else "training"
    images = spread(splits.val if len(splits.val) else splits.train, count)
    return images.images[0 : len(images)], name


def export_run(
    run_dir: str | Path,
    output: str | Path | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    check_images: int = PARITY_IMAGES,
    opset: int = OPSET,
    images: torch.Tensor | None = None,
    max_drop: float | None = None,
    images_from: str = "given",
) -> dict:
    """Export a run's best model to ONNX (``RUN/model.onnx`` by default) and check it on ``check_images`` validation
    images (or on the uint8 ``images`` given, recorded as drawn from ``images_from``); the parity figures. With
    ``max_drop`` (points), the int8 model instead (``RUN/model.int8.onnx``), gated on validation accuracy
    (``quantize.py``)."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    card = run_card(run)
    weights = run.file(BEST_WEIGHTS)
    int8 = max_drop is not None
    path = Path(output) if output else run.file(INT8_MODEL if int8 else ONNX_MODEL)
    if path.suffix != ".onnx":
        raise ImgclfError(f"the ONNX output must end in .onnx: {path}")
    if path.is_dir():
        raise ImgclfError(f"the ONNX output is a folder: {path}")
    splits = located_splits(run, cfg, card, data, data_dir) if int8 or (images is None and check_images) else None
    split = images_from
    if images is None and check_images and not int8:
        images, split = parity_images(splits, check_images)

    model = load_network(card.architecture, card.num_classes, weights)
    network = model.network if isinstance(model, TransferModel) else model  # what the ONNX graph holds
    reference = TorchPredictor(model, card, torch.device("cpu"), "fp32")  # the network, as exported
    result = {"model": card.model, "format": "onnx", "opset": opset, "file": path.name}
    if int8:
        atomic_write(
            path, lambda tmp: export_int8(tmp, path, network, reference, weights, splits, max_drop, result, opset)
        )
        return {**result, "path": str(path)}

    def export_and_check(tmp: Path) -> None:
        """Export to ``tmp``; a failed parity check raises, and atomic_write then removes ``tmp``."""
        start = time.perf_counter()
        result["exporter"] = export_network(network, card.input_size, tmp, opset)
        write_metadata(tmp, card, weights_digest(weights))
        result.update(bytes=tmp.stat().st_size, export_seconds=time.perf_counter() - start)
        if images is None:
            return
        result["parity"] = p = check_parity(reference, OnnxPredictor(tmp, card), images) | {"split": split}
        write_json(parity_path(path), result)
        if not p["passed"]:
            raise ImgclfError(
                f"ONNX parity check failed: max |Δlogit| {p['max_abs_diff']:.2e} ({p['relative_diff']:.2e} of the "
                f"largest logit; tolerance {TOLERANCE:g}), top-1 agreement {p['top1_agreement']:.2%}; "
                f"no model written (figures in {parity_path(path)})"
            )

    atomic_write(path, export_and_check)
    return {**result, "path": str(path)}


def export_int8(
    tmp: Path,
    path: Path,
    network: torch.nn.Module,
    reference: TorchPredictor,
    weights: Path,
    splits: Splits,
    max_drop: float,
    result: dict,
    opset: int,
) -> None:
    """Write the int8 model of ``network`` to ``tmp`` (to become ``path``) and gate it against its fp32 ``reference``:
    a refused model raises, and atomic_write then removes ``tmp``."""
    start, card = time.perf_counter(), reference.card
    fp32 = tmp.with_name(tmp.name + ".fp32.onnx")
    try:
        result["exporter"] = export_network(network, card.input_size, fp32, opset)
        calibration = spread(splits.train, CALIBRATION_IMAGES)
        quantize_onnx(fp32, tmp, reference, calibration.images[0 : len(calibration)])
    finally:
        fp32.unlink(missing_ok=True)
    gate = int8_gate(reference, tmp, card, splits.val, max_drop)
    write_metadata(tmp, quantized_card(card, len(calibration), gate), weights_digest(weights))
    result.update(bytes=tmp.stat().st_size, export_seconds=time.perf_counter() - start, precision="int8", gate=gate)
    write_json(parity_path(path), result)
    if not gate["passed"]:
        raise ImgclfError(
            f"int8 model refused: validation accuracy {gate['fp32_accuracy']:.2%} (fp32) → {gate['int8_accuracy']:.2%} "
            f"(int8), a drop of {gate['drop_points']:.2f} points, more than --max-drop {max_drop:g}; no model "
            f"written (figures in {parity_path(path)})"
        )
