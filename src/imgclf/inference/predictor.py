"""The one way to get a trained model's outputs: evaluation, ``imgclf predict``, the export's parity check and the
server all call a :class:`Predictor`.

uint8 images (N, 3, S, S) at the card's stored side → resized (antialiased) to the network's input side and
normalised with the card's mean/std → the network, in PyTorch or, for an exported ``.onnx``, in onnxruntime (or
OpenVINO) → float32 logits. Multi-label models (``card.task``) give each class a sigmoid probability, and predict the
classes at or above their thresholds (fitted on validation). Flip TTA averages the mirrored images' logits (with a
recipe's ``tta_shift``, airbench's six views: half the weight on the image and its mirror, half on both shifted ±N px
diagonally, and their mirrors); the run's fitted temperature turns logits into calibrated probabilities. The images
themselves come from ``data/decode.py``, the code that prepared the training images, so a training image predicted
from its file gives the logits evaluation computed for it.
"""

import copy
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special
from torch import nn
from tqdm.auto import tqdm

from imgclf.artifacts.card import ModelCard
from imgclf.core.device import autocast, describe_device, resolve_precision
from imgclf.core.onnx import onnx_session, openvino_model
from imgclf.data.features import ActivationCache, resize_normalise
from imgclf.data.images import ImageSet
from imgclf.data.loader import inference_batch_size
from imgclf.models.transfer import TransferModel

UNKNOWN = "unknown"  # the answer below a card's abstain threshold


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

    def answers(self, logits: np.ndarray) -> list[str] | None:
        """With the card's abstain rule: each row's top class, or ``unknown`` where the rule's score is below its
        threshold; None without a rule."""
        rule = self.card.abstain
        if rule is None:
            return None
        scores, top = abstain_score(logits, rule["score"], self.temperature), np.asarray(logits).argmax(1)
        return [self.classes[j] if s >= rule["threshold"] else UNKNOWN for s, j in zip(scores, top, strict=True)]

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

    def __init__(self, path: Path, card: ModelCard, spinning: bool = True) -> None:
        super().__init__(card)
        self.session = onnx_session(path, spinning=spinning)
        self.input_name = self.session.get_inputs()[0].name

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """As :meth:`Predictor.prepare`, in NumPy where no resize is needed: a torch operation between two runs wakes
        PyTorch's threads while onnxruntime's still spin: ResNet-20's int8 model ran 4,703 img/s at batch 64 that way
        against 6,753 this way (benchmarks/results/onnx_prepare.json). The same float32 operations, in the same
        order: the same values."""
        if self.card.input_size and self.card.input_size != images.shape[-1]:
            return super().prepare(images)
        x = images.numpy().astype(np.float32) / np.float32(255)
        shape = (1, -1, 1, 1)
        x = (x - np.asarray(self.mean, np.float32).reshape(shape)) / np.asarray(self.std, np.float32).reshape(shape)
        return torch.from_numpy(x)

    def forward(self, x: torch.Tensor) -> np.ndarray:
        x = x.float().contiguous().numpy()
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)


class OpenVinoPredictor(OnnxPredictor):
    """An exported ``.onnx`` model compiled by OpenVINO for the CPU (the optional ``imgclf[openvino]``), computing at
    ``precision`` (fp32, or bf16 where the CPU has it); an int8 file's quantized layers run in int8. One inference
    request per thread: a request is not shared between threads."""

    runtime = "openvino"

    def __init__(self, path: Path, card: ModelCard, precision: str = "fp32") -> None:
        Predictor.__init__(self, card)
        self.precision = precision
        self.compiled = openvino_model(path, precision)
        self.requests = threading.local()

    def forward(self, x: torch.Tensor) -> np.ndarray:
        request = getattr(self.requests, "request", None)
        if request is None:
            request = self.requests.request = self.compiled.create_infer_request()
        out = request.infer([x.float().contiguous().numpy()])
        return np.array(out[0], dtype=np.float32)  # a copy: the request reuses its output buffer


def accuracy(logits: np.ndarray, labels: np.ndarray, card: ModelCard) -> float:
    """Top-1 accuracy of ``logits`` (N, C) against integer ``labels`` (N,); for multi-hot ``labels`` (N, C), the
    exact-match ratio of the card's decisions (calibrated probabilities at its thresholds, ½ before it has any)."""
    if labels.ndim == 2:
        probs = special.expit(np.asarray(logits, dtype=np.float64) / (card.temperature or 1.0))
        predicted = probs >= np.asarray(card.thresholds or [0.5] * card.num_classes)
        return float((predicted == labels.astype(bool)).all(1).mean())
    return float((logits.argmax(1) == labels).mean())


def top_probability(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """The probability of the top class of each row of single-label ``logits``, calibrated by ``temperature``
    (float64)."""
    return special.softmax(np.asarray(logits, dtype=np.float64) / (temperature or 1.0), axis=1).max(axis=1)


def abstain_score(logits: np.ndarray, score: str, temperature: float | None) -> np.ndarray:
    """The abstain ``score`` (data/policies.py) of each row of single-label ``logits`` (float64): ``probability``,
    the calibrated probability of the top class; ``energy``, the logsumexp of the raw logits (Liu et al. 2020)."""
    if score == "probability":
        return top_probability(logits, temperature)
    return special.logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


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
