"""``imgclf export RUN_DIR --int8``: onnxruntime static quantization of the run's ONNX graph, behind an accuracy gate.

The fp32 export is pre-processed (shape inference, graph optimisation: BatchNorm folded into the convolutions), then
quantized in the QDQ format: int8 weights per output channel, uint8 activations whose ranges are calibrated on
``CALIBRATION_IMAGES`` training images spread over the training split — never a test image. The gate replaces the
fp32 export's parity check: on the validation split, int8 top-1 accuracy (multi-label: exact match at the thresholds)
is compared with the fp32 PyTorch network's, and the file is refused, in one line with both figures, when it drops by
more than ``max_drop`` points. The card in the file says how it was quantized and what the gate measured.
"""

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from imgclf.artifacts.card import ModelCard
from imgclf.core.errors import ImgclfError
from imgclf.core.onnx import INPUT_NAME
from imgclf.data.images import ImageSet
from imgclf.inference.predictor import OnnxPredictor, Predictor, accuracy

CALIBRATION_IMAGES = 512
CALIBRATION_BATCH = 64
GATE_IMAGES = 10_000  # validation images the gate reads at most (spread over the split)


def spread(data: ImageSet, count: int) -> ImageSet:
    """``count`` images spread evenly over ``data`` (all of them if fewer), in order."""
    rows = np.unique(np.linspace(0, len(data) - 1, min(count, len(data))).round().astype(np.int64))
    return data.subset(torch.from_numpy(rows))


def quantize_onnx(fp32: Path, output: Path, reference: Predictor, calibration: torch.Tensor) -> None:
    """Write the int8 QDQ model of the fp32 ONNX file ``fp32`` to ``output``, its activation ranges calibrated on the
    uint8 ``calibration`` images (prepared as ``reference`` prepares them: resized and normalised)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Calibration(CalibrationDataReader):
        """The network's normalised input, a batch at a time."""

        def __init__(self) -> None:
            starts = range(0, len(calibration), CALIBRATION_BATCH)
            prepare = reference.prepare
            self.batches = ({INPUT_NAME: prepare(calibration[s : s + CALIBRATION_BATCH]).numpy()} for s in starts)

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(output),
                Calibration(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as exc:  # onnxruntime's tools raise what they meet; nothing is written then
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise ImgclfError(f"int8 quantization failed: {type(exc).__name__}: {reason}"[:300]) from None


def gate_accuracy(predictor: Predictor, data: ImageSet) -> float:
    """Top-1 accuracy of ``predictor`` on ``data`` (multi-label: the exact-match ratio of its decisions)."""
    return accuracy(predictor.dataset_logits(data), data.labels.numpy(), predictor.card)


def int8_gate(reference: Predictor, quantized: Path, card: ModelCard, val: ImageSet, max_drop: float) -> dict:
    """The gate's figures: validation accuracy of the fp32 ``reference`` and of the ``quantized`` file, and whether
    the drop stays within ``max_drop`` points."""
    if not len(val):
        raise ImgclfError("--int8 checks accuracy on the validation split, and this run has none (--val-fraction 0)")
    data = spread(val, GATE_IMAGES)
    fp32, int8 = gate_accuracy(reference, data), gate_accuracy(OnnxPredictor(quantized, card), data)
    drop = (fp32 - int8) * 100
    return {
        "images": len(data),
        "split": "validation",
        "fp32_accuracy": fp32,
        "int8_accuracy": int8,
        "drop_points": round(drop, 4),
        "max_drop_points": max_drop,
        "passed": drop <= max_drop,
    }


def quantized_card(card: ModelCard, calibration_images: int, gate: dict) -> ModelCard:
    """``card`` for the int8 file: how it was quantized, on what, and what the gate measured."""
    quantization = {
        "precision": "int8",
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8, MinMax ranges",
        "calibration_images": calibration_images,
        "calibrated_on": "train",
        "gate": gate,
    }
    return dataclasses.replace(card, quantization=quantization)
