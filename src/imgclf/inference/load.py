"""Finding and loading a trained model: a run directory, its weights file or an exported ``.onnx`` → a
:class:`~imgclf.inference.predictor.Predictor`, in the runtime asked for (auto: whichever of PyTorch and onnxruntime
is faster here, measured in a fraction of a second; OpenVINO when asked for).
Everything that can be checked without building the network is checked first (:func:`resolve_model`), so a server
can bind, answer /health and load the rest in the background."""

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgclf.artifacts.card import ModelCard
from imgclf.artifacts.files import BEST_WEIGHTS, METRICS, MODEL_CARD, ONNX_MODEL
from imgclf.artifacts.runs import RunDir
from imgclf.artifacts.weights import load_weights, read_metadata, read_weights
from imgclf.core.device import resolve_precision, select_device
from imgclf.core.errors import OPENVINO_MISSING, ImgclfError
from imgclf.core.onnx import openvino_installed
from imgclf.data.features import tensor_digest
from imgclf.data.loader import inference_batch_size
from imgclf.inference.options import ONNX_RUNTIMES, RUNTIMES
from imgclf.inference.predictor import OnnxPredictor, OpenVinoPredictor, Predictor, TorchPredictor
from imgclf.inference.source import model_path, onnx_metadata
from imgclf.models.transfer import TransferModel, build_network

CARD_KEY = "model_card"  # the card's key in safetensors and ONNX metadata
WEIGHTS_KEY = "weights_sha1"  # ONNX metadata: the weights_digest of the weights it was exported from


def load_network(arch: dict, num_classes: int, weights: Path) -> nn.Module | TransferModel:
    """The network a card's ``arch`` names, with the weights of ``weights`` (in eval mode, on the CPU)."""
    model = build_network(arch, num_classes)
    network = model.network if isinstance(model, TransferModel) else model
    load_weights(weights, network)
    network.eval()
    return model


def weights_digest(path: Path) -> str:
    """SHA-1 of a weights file's tensors (names and values; its metadata, such as the card, may change)."""
    tensors = read_weights(path)[0]
    names = sorted(tensors)
    return hashlib.sha1((json.dumps(names) + tensor_digest([tensors[n] for n in names])).encode()).hexdigest()


def card_from_metadata(metadata: dict, source: Path) -> ModelCard:
    """The model card stored in a weights or ONNX file's metadata."""
    text = metadata.get(CARD_KEY)
    if text is None:
        raise ImgclfError(f"{source} carries no model card: use the run directory or a file imgclf wrote")
    card = json.loads(text) if isinstance(text, str) else text
    return ModelCard.from_dict(card, f"{source} model card")


def is_current(path: Path, digest: str) -> bool:
    """True when the ONNX file at ``path`` was exported from the weights whose :func:`weights_digest` is ``digest``
    (computed once by the caller: it reads and hashes every tensor)."""
    return path.is_file() and onnx_metadata(path).get(WEIGHTS_KEY) == digest


def run_onnx(run: RunDir) -> Path | None:
    """The run's exported ONNX model when it was exported from the run's current weights, else None."""
    path = run.file(ONNX_MODEL)
    return path if is_current(path, weights_digest(run.file(BEST_WEIGHTS))) else None


def run_card(run: RunDir) -> ModelCard:
    """A run's model card (a one-line error when it has none), with the temperature of an evaluation by an earlier
    version that kept it in ``metrics.json`` only."""
    card = run.read_card()
    if card is None:
        raise ImgclfError(f"{run.path} has no model card ({MODEL_CARD}): evaluate it once (`imgclf evaluate RUN_DIR`)")
    if card.temperature is None and run.file(METRICS).is_file():
        card.temperature = run.read_metrics().get("temperature")
    return card


@dataclass
class ModelSource:
    """What a run directory, weights file or ``.onnx`` file holds, checked: its card, and the files to load."""

    card: ModelCard
    weights: Path | None  # PyTorch weights (None: an .onnx file alone)
    onnx: Path | None  # an ONNX model of the same weights, when there is one
    run: RunDir | None = None


def resolve_model(
    source: str | Path, device: str = "auto", runtime: str = "auto", onnx_path: Path | None = None
) -> ModelSource:
    """The files of ``source`` for ``runtime``, checked without building a network (``onnx_path``: a run's export
    kept elsewhere): a one-line error for a path that is missing or no model, a run without a card or weights, or a
    runtime the files cannot run in."""
    if runtime not in RUNTIMES:
        raise ImgclfError(f"unknown runtime {runtime!r} (choose from: {', '.join(RUNTIMES)})")
    if runtime == "openvino" and not openvino_installed():
        raise ImgclfError(OPENVINO_MISSING)
    path = model_path(source)
    if path.is_dir():
        run = RunDir(path)
        run.read_config()  # a one-line error for a config that does not load
        card = run_card(run)
        weights = run.file(BEST_WEIGHTS)
        if not weights.is_file():
            raise ImgclfError(f"{path} has no trained weights ({BEST_WEIGHTS}): has training finished?")
        if runtime in ONNX_RUNTIMES or (runtime == "auto" and select_device(device).type == "cpu"):
            onnx_path = onnx_path or run_onnx(run)  # the ONNX runtimes run on the CPU
        if runtime in ONNX_RUNTIMES and onnx_path is None:
            raise ImgclfError(f"{path} has no current ONNX export: run `imgclf export {path}` first")
        return ModelSource(card, weights, onnx_path if runtime != "torch" else None, run)
    if path.suffix == ".onnx":
        if runtime == "torch":
            raise ImgclfError(f"{path} is an ONNX model: it runs with --runtime {' or '.join(ONNX_RUNTIMES)} (or auto)")
        return ModelSource(card_from_metadata(onnx_metadata(path), path), None, path)
    if runtime in ONNX_RUNTIMES:  # a .safetensors file
        raise ImgclfError(f"{path} holds PyTorch weights: export the run to ONNX for --runtime {runtime}")
    return ModelSource(card_from_metadata(read_metadata(path), path), path, None)


def load_predictor(
    source: str | Path | ModelSource,
    device: str = "auto",
    runtime: str = "auto",
    precision: str | None = None,
    batch_size: int = 0,
    onnx_path: Path | None = None,
    serving: bool = False,
) -> Predictor:
    """A predictor for a run directory, a weights file imgclf wrote (``.safetensors``) or an exported ``.onnx`` (or
    their :func:`resolve_model`).

    ``runtime`` auto: an ``.onnx`` file runs in onnxruntime, weights in PyTorch; a run with an ONNX export of its
    current weights (``onnx_path``, else ``RUN/model.onnx``), on a CPU, runs in whichever of the two is faster at
    ``batch_size`` images per batch — measured now, in a fraction of a second (neither wins everywhere:
    benchmarks/results/inference.json). OpenVINO runs when asked for, or when ``imgclf serve`` follows a benchmark
    that chose it: auto does not time it, so that its bf16 never replaces the logits evaluation computed.
    ``precision``: PyTorch's default is the card's; OpenVINO's, bf16 where the CPU computes it natively.
    ``serving``: for one request's few images at a time, between which the server's Python works (onnxruntime's
    threads then sleep instead of spinning: core/onnx.py)."""
    found = source if isinstance(source, ModelSource) else resolve_model(source, device, runtime, onnx_path)
    card, onnx_path = found.card, found.onnx
    if runtime == "openvino":
        return OpenVinoPredictor(onnx_path, card, resolve_precision(precision or "auto", torch.device("cpu")))
    candidates = []
    if onnx_path is not None:
        candidates.append(OnnxPredictor(onnx_path, card, spinning=not serving))
    if runtime != "onnxruntime" and found.weights is not None:
        model = load_network(card.architecture, card.num_classes, found.weights)
        candidates.append(TorchPredictor(model, card, select_device(device), precision or card.precision))
    if len(candidates) == 1:
        return candidates[0]
    return fastest(candidates, batch_size or inference_batch_size(card.input_size, candidates[0].device))


def row_predictor(
    run: RunDir, device: str, runtime: str, precision: str, file: str, serving: bool = False
) -> Predictor:
    """The predictor of one row of ``imgclf benchmark``: the run's weights in PyTorch at ``precision`` on ``device``,
    or its ONNX ``file`` in onnxruntime or OpenVINO (an int8 file's other layers in fp32: bf16 was no faster for
    ResNet-20, 19,343 against 19,215 img/s at batch 64, benchmarks/results/README.md); ``serving``: as
    :func:`load_predictor`'s."""
    if runtime == "torch":
        return load_predictor(run.path, device, "torch", precision=precision, serving=serving)
    precision = None if runtime == "onnxruntime" else "fp32" if precision == "int8" else precision
    return load_predictor(run.file(file), "cpu", runtime, precision, serving=serving)


def fastest(candidates: list[Predictor], batch_size: int, seconds: float = 0.25) -> Predictor:
    """The candidate that predicts most images per second at ``batch_size``, each timed for about ``seconds`` after a
    warm-up batch; the figures are kept in its ``measured`` attribute."""
    side = candidates[0].card.data_size
    images = torch.zeros(batch_size, 3, side, side, dtype=torch.uint8)
    measured = {}
    for candidate in candidates:
        candidate.logits(images)
        count, start = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - start < seconds:
            candidate.logits(images)
            count += batch_size
        measured[candidate.runtime] = count / (time.perf_counter() - start)
    best = max(candidates, key=lambda c: measured[c.runtime])
    best.measured = measured
    return best


def runtime_note(predictor: Predictor) -> str:
    """The runtime (and int8, for a quantized model), and the measurement that chose it, e.g. 'onnxruntime: 3,473
    img/s against torch 861'."""
    if not predictor.measured:
        precision = f" {predictor.precision}" if predictor.runtime == "openvino" else ""
        return predictor.runtime + (" int8" if predictor.card.quantization else precision)
    others = ", ".join(f"{name} {rate:,.0f}" for name, rate in predictor.measured.items() if name != predictor.runtime)
    return f"{predictor.runtime}: {predictor.measured[predictor.runtime]:,.0f} img/s against {others}"
