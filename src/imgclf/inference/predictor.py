"""The one way to get a trained model's outputs: evaluation, ``imgclf predict``, the export's parity check and the
server all call a :class:`Predictor`.

uint8 images (N, 3, S, S) at the card's stored side → resized (antialiased) to the network's input side and
normalised with the card's mean/std → the network, in PyTorch or, for an exported ``.onnx``, in onnxruntime → float32
logits. Multi-label models (``card.task``) give each class a sigmoid probability, and predict the classes at or
above their thresholds (fitted on validation). Flip TTA averages the mirrored images' logits (with a recipe's
``tta_shift``, airbench's six views: half the weight on the image and its mirror, half on both shifted ±N px
diagonally, and their mirrors); the run's fitted temperature turns logits into calibrated probabilities. The images
themselves come from ``data/decode.py``, the code that prepared the training images, so a training image predicted
from its file gives the logits evaluation computed for it.
"""

import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special
from torch import nn
from tqdm.auto import tqdm

from imgclf.artifacts.runs import BEST_WEIGHTS, METRICS, MODEL_CARD, ONNX_MODEL, ModelCard, RunDir
from imgclf.artifacts.weights import load_weights, read_metadata, read_weights
from imgclf.core.device import autocast, describe_device, resolve_precision, select_device
from imgclf.core.errors import ImgclfError
from imgclf.core.onnx import onnx_session
from imgclf.data.features import ActivationCache, resize_normalise, tensor_digest
from imgclf.data.images import ImageSet
from imgclf.data.loader import inference_batch_size
from imgclf.inference.options import RUNTIMES
from imgclf.models.transfer import TransferModel, build_network

CARD_KEY = "model_card"  # the card's key in safetensors and ONNX metadata
WEIGHTS_KEY = "weights_sha1"  # ONNX metadata: the weights_digest of the weights it was exported from


class Predictor:
    """A trained model and its card: images in, logits and calibrated probabilities out."""

    runtime = ""
    device = torch.device("cpu")
    measured: dict[str, float] | None = None  # images/second of each runtime, when auto chose between them

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.mean, self.std = tuple(card.mean), tuple(card.std)

    @property
    def classes(self) -> list[str]:
        return self.card.classes

    @property
    def temperature(self) -> float | None:
        """The temperature fitted on the validation split at evaluation (None before the run is evaluated)."""
        return self.card.temperature

    def forward(self, x: torch.Tensor) -> np.ndarray:
        """Logits of a batch of normalised input images."""
        raise NotImplementedError

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images at the stored side as the network's normalised float input."""
        return resize_normalise(images, self.card.input_size, self.mean, self.std)

    def logits(self, images: torch.Tensor | np.ndarray, flip_tta: bool = False) -> np.ndarray:
        """Float32 logits (N, C) of one batch of uint8 images (N, 3, S, S); with ``flip_tta`` averaged with the
        mirrored images' (and the shifted views', when the run's recipe sets ``tta_shift``)."""
        # the uint8 images travel (a quarter of float32's bytes), to be normalised, shifted and mirrored on the device
        x = self.prepare(torch.as_tensor(images).to(self.device))
        if not flip_tta:
            return self.forward(x)
        out = self.flip_mean(x)
        shift = self.tta_shift
        if shift:
            side = x.shape[-1]
            padded = F.pad(x, (shift,) * 4, mode="reflect")
            views = (padded[..., :side, :side], padded[..., 2 * shift :, 2 * shift :])  # up-left, down-right
            out = out / 2 + sum(self.flip_mean(v.contiguous()) for v in views) / 4
        return out

    @property
    def tta_shift(self) -> int:
        """Pixels of the diagonal shifts test-time augmentation adds to the flips (0: flips only)."""
        return self.card.tta_shift

    @property
    def tta_views(self) -> str:
        """What ``flip_tta`` averages, in words."""
        return f"flip, ±{self.tta_shift} px diagonal shifts" if self.tta_shift else "flip"

    def flip_mean(self, x: torch.Tensor) -> np.ndarray:
        """Mean logits of normalised images and their mirrors."""
        return (self.forward(x) + self.forward(x.flip(3))) / 2

    def dataset_logits(
        self, data: ImageSet, flip_tta: bool = False, desc: str = "", progress: bool = False
    ) -> np.ndarray:
        """Float32 logits (N, C) of every image of ``data``, in batches."""
        n = len(data)
        if not n:
            return np.zeros((0, len(self.classes)), np.float32)
        size = inference_batch_size(max(self.card.input_size, data.images.shape[-1]), self.device)
        starts = range(0, n, size)
        bar = tqdm(starts, desc=desc or "predicting", unit="batch", disable=not progress, leave=False)
        return np.concatenate([self.logits(data.images[s : s + size], flip_tta) for s in bar])

    @property
    def multilabel(self) -> bool:
        """True when the model gives each class its own probability (sigmoid) and predicts any number of them."""
        return self.card.task == "multilabel"

    def probabilities(self, logits: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Softmax (multi-label: sigmoid) of ``logits``, divided first by the fitted temperature when ``calibrated``
        and one exists."""
        scale = self.temperature if calibrated and self.temperature else 1.0
        scaled = (np.asarray(logits) / scale).astype(np.float64)
        probs = special.expit(scaled) if self.multilabel else special.softmax(scaled, axis=1)
        return probs.astype(np.float32)

    def labels(self, logits: np.ndarray, shown: np.ndarray | None = None) -> list[list[tuple[str, float]]] | None:
        """Multi-label models: the (class, probability) pairs whose calibrated probability reaches the class's
        threshold (½ before the run is evaluated), most probable first, each with its value in ``shown`` (the
        probabilities reported, e.g. uncalibrated; default the calibrated ones); None for single-label models. The
        thresholds were fitted on calibrated probabilities, so the decision always uses them."""
        if not self.multilabel:
            return None
        calibrated = self.probabilities(logits)
        shown = calibrated if shown is None else shown
        thresholds = np.asarray(self.card.thresholds or [0.5] * len(self.classes))
        rows = []
        for decide, values in zip(calibrated, shown, strict=True):
            chosen = np.flatnonzero(decide >= thresholds)
            order = chosen[np.argsort(-values[chosen], kind="stable")]
            rows.append([(self.classes[j], float(values[j])) for j in order])
        return rows

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable (class, probability) pairs of each row, most probable first."""
        k = min(k, len(self.classes))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(probabilities, order, strict=True)]


class TorchPredictor(Predictor):
    """A PyTorch network (from scratch or a timm backbone); a transfer run's images of a dataset may go through an
    activation cache of its frozen prefix, as in training (evaluation hands one in)."""

    runtime = "torch"

    def __init__(
        self,
        model: nn.Module | TransferModel,
        card: ModelCard,
        device: torch.device,
        precision: str = "auto",
        cache: ActivationCache | None = None,
    ) -> None:
        super().__init__(card)
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.transfer = model if isinstance(model, TransferModel) else None
        self.network = (model.network if self.transfer else model).eval()
        # what forward runs: the same function, faster; folded and checked in fp32 on the CPU (a GPU's TF32 would not
        # reproduce the logits to the check's tolerance)
        self.runner = fold_batchnorm(self.network.cpu(), card.input_size).to(device)
        self.network.to(device)
        self.channels_last = card.channels_last
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
            self.runner.to(memory_format=torch.channels_last)
        self.folded = self.runner is not self.network
        self.cache = cache if self.transfer is not None else None

    def engine(self) -> dict:
        """How this predictor computes logits: runtime, device, precision, layout, BatchNorm folding, and the
        activation cache's engines where a dataset went through it."""
        record = {"runtime": self.runtime, "device": describe_device(self.device), "precision": self.precision}
        record.update(channels_last=self.channels_last, batchnorm_folded=self.folded)
        if self.cache is not None:
            record["activation_cache"] = self.cache.record()
        return record

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device).contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        with autocast(self.device, self.precision):
            return self.runner(x).float().cpu().numpy()

    def dataset_logits(
        self, data: ImageSet, flip_tta: bool = False, desc: str = "", progress: bool = False
    ) -> np.ndarray:
        if self.cache is None or not len(data):
            return super().dataset_logits(data, flip_tta, desc, progress)
        out = self.cached_logits(data, False, desc)
        return (out + self.cached_logits(data, True, desc)) / 2 if flip_tta else out

    @torch.inference_mode()
    def cached_logits(self, data: ImageSet, flip: bool, desc: str) -> np.ndarray:
        """Logits through the frozen prefix's cached activations (mirrored ones cached under their own key)."""
        acts = self.cache.get(data, flip=flip, desc=desc)
        tail, out = self.transfer.tail.eval(), []
        memory = torch.channels_last if self.channels_last and acts.ndim == 4 else torch.contiguous_format
        for start in range(0, len(acts), 512):
            x = acts[start : start + 512].to(self.device, torch.float32).contiguous(memory_format=memory)
            with autocast(self.device, self.precision):
                out.append(tail(x).float().cpu().numpy())
        return np.concatenate(out)


class OnnxPredictor(Predictor):
    """An exported ``.onnx`` model run by onnxruntime on the CPU."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, card: ModelCard) -> None:
        super().__init__(card)
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> np.ndarray:
        x = x.float().contiguous().numpy()
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)


def fold_batchnorm(network: nn.Module, side: int) -> nn.Module:
    """A copy of ``network`` (in eval mode) with each BatchNorm folded into the convolution before it (measured in
    benchmarks/results/inference.json) — or ``network`` itself where nothing folds or the folded copy does not give
    the same logits. torch.fx finds the pairs where the network traces; otherwise pairs of
    neighbours in an ``nn.Sequential`` are folded."""
    from torch.fx.experimental.optimization import fuse
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    network = network.eval()
    try:
        folded = fuse(network)
    except Exception:  # control flow on tensor values (PooledFlatten, timm's dynamic padding) does not trace
        folded, count = copy.deepcopy(network), 0
        for module in folded.modules():
            if not isinstance(module, nn.Sequential):
                continue
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.num_features == conv.out_channels:
                    module[i], module[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
                    count += 1
        if not count:
            return network
    x = torch.randn(2, 3, side, side, device=next(network.parameters()).device)
    with torch.inference_mode():
        reference, got = network.float()(x), folded.float()(x)
    if not torch.isfinite(reference).all():  # a diverged network: nothing to compare against, keep it as it is
        return network
    if not torch.allclose(got, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max())):
        return network
    return folded


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


def onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata of an ONNX file (its weights are not loaded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for files that are not ONNX
        raise ImgclfError(f"not an ONNX model: {path} ({type(exc).__name__})") from None
    if not model.ir_version or not len(model.graph.node):  # protobuf reads many short byte strings as an empty model
        raise ImgclfError(f"not an ONNX model: {path} (no graph)")
    return {p.key: p.value for p in model.metadata_props}


def card_from_metadata(metadata: dict, source: Path) -> ModelCard:
    """The model card stored in a weights or ONNX file's metadata."""
    text = metadata.get(CARD_KEY)
    if text is None:
        raise ImgclfError(f"{source} carries no model card: use the run directory or a file imgclf wrote")
    card = json.loads(text) if isinstance(text, str) else text
    return ModelCard.from_dict(card, f"{source} model card")


def run_onnx(run: RunDir) -> Path | None:
    """The run's exported ONNX model when it was exported from the run's current weights, else None."""
    path = run.file(ONNX_MODEL)
    if not path.is_file():
        return None
    return path if onnx_metadata(path).get(WEIGHTS_KEY) == weights_digest(run.file(BEST_WEIGHTS)) else None


def run_card(run: RunDir) -> ModelCard:
    """A run's model card (a one-line error when it has none), with the temperature of an evaluation by an earlier
    version that kept it in ``metrics.json`` only."""
    card = run.read_card()
    if card is None:
        raise ImgclfError(f"{run.path} has no model card ({MODEL_CARD}): evaluate it once (`imgclf evaluate RUN_DIR`)")
    if card.temperature is None and run.file(METRICS).is_file():
        card.temperature = run.read_metrics().get("temperature")
    return card


def load_predictor(
    source: str | Path,
    device: str = "auto",
    runtime: str = "auto",
    precision: str | None = None,
    batch_size: int = 0,
    onnx_path: Path | None = None,
) -> Predictor:
    """A predictor for a run directory, a weights file imgclf wrote (``.safetensors``) or an exported ``.onnx``.

    ``runtime`` auto: an ``.onnx`` file runs in onnxruntime, weights in PyTorch; a run with an ONNX export of its
    current weights (``onnx_path``, else ``RUN/model.onnx``), on a CPU, runs in whichever of the two is faster at
    ``batch_size`` images per batch — measured now, in a fraction of a second (neither wins everywhere:
    benchmarks/results/inference.json)."""
    if runtime not in RUNTIMES:
        raise ImgclfError(f"unknown runtime {runtime!r} (choose from: {', '.join(RUNTIMES)})")
    path = Path(source).expanduser()
    if not path.exists():
        raise ImgclfError(f"no such run directory or model file: {source}")
    if path.is_dir():
        run = RunDir(path)
        run.read_config()  # a one-line error for a folder that is no run
        card = run_card(run)
        weights = run.file(BEST_WEIGHTS)
        if not weights.is_file():
            raise ImgclfError(f"{path} has no trained weights ({BEST_WEIGHTS}): has training finished?")
        if runtime == "onnxruntime" or (runtime == "auto" and select_device(device).type == "cpu"):
            onnx_path = onnx_path or run_onnx(run)  # onnxruntime runs on the CPU
        if runtime == "onnxruntime" and onnx_path is None:
            raise ImgclfError(f"{path} has no current ONNX export: run `imgclf export {path}` first")
    elif path.suffix == ".onnx":
        if runtime == "torch":
            raise ImgclfError(f"{path} is an ONNX model: it runs with --runtime onnxruntime (or auto)")
        return OnnxPredictor(path, card_from_metadata(onnx_metadata(path), path))
    elif path.suffix == ".safetensors":
        if runtime == "onnxruntime":
            raise ImgclfError(f"{path} holds PyTorch weights: export the run to ONNX for --runtime onnxruntime")
        weights, card = path, card_from_metadata(read_metadata(path), path)
    else:
        raise ImgclfError(f"{path} is not a run directory, .safetensors or .onnx file")
    candidates = []
    if onnx_path is not None:
        candidates.append(OnnxPredictor(onnx_path, card))
    if runtime != "onnxruntime":
        model = load_network(card.architecture, card.num_classes, weights)
        candidates.append(TorchPredictor(model, card, select_device(device), precision or card.precision))
    if len(candidates) == 1:
        return candidates[0]
    return fastest(candidates, batch_size or inference_batch_size(card.input_size, candidates[0].device))


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
    """The runtime, and the measurement that chose it, e.g. 'onnxruntime: 3,473 img/s against torch 861'."""
    if not predictor.measured:
        return predictor.runtime
    others = ", ".join(f"{name} {rate:,.0f}" for name, rate in predictor.measured.items() if name != predictor.runtime)
    return f"{predictor.runtime}: {predictor.measured[predictor.runtime]:,.0f} img/s against {others}"
