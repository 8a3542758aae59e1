"""Grad-CAM (Selvaraju et al. 2017): where in an image the network found the class it chose.

captum's ``LayerGradCam`` (maintained by the PyTorch team) weighs the channels of one of the network's feature maps
by the mean gradient of the class's logit, sums them and keeps the positive part. The feature map is found by
running the network once (:func:`saliency_layer`): the last module, called once, whose output is (N, C, H, W) with H
and W at least :data:`MIN_GRID` — a ResNet's last stage, a timm backbone's head convolution at 224 px, or the stage
before it where the last map is coarser (3×3 for Lite2 at 96 px: benchmarks/results/explain_*.json) — so every
network imgclf builds is explained the same way. Maps are upsampled bilinearly to the image and scaled to [0, 1] per
image; the overlays blend a colour map over the image, stronger where the map is.

The explained network is a float32 copy on the CPU, unfolded (BatchNorm kept), so its hooks never touch the
predictor's. benchmarks/explain.py measures the maps against random ones by deletion (tests/test_explain.py holds
the model-randomisation sanity check of Adebayo et al. 2018).
"""

import copy
import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from imgclf.artifacts.card import ModelCard
from imgclf.core.errors import ImgclfError
from imgclf.core.io import atomic_write, check_writable_folder
from imgclf.data.features import resize_normalise
from imgclf.inference.load import load_network, resolve_model
from imgclf.inference.predictor import Predictor, TorchPredictor
from imgclf.models.transfer import TransferModel

METHOD = "grad-cam"
DISPLAY_SIDE = 224  # overlays of smaller images are enlarged to this side, for people to see
COLOURS = "jet"  # matplotlib's colour map of the overlays: blue (little) … red (most)
MAX_ALPHA = 0.6  # how opaque the colour is where the map is strongest (0 where it is nothing)
MIN_GRID = 6  # cells per side of the explained feature map, where the network has one that fine


def saliency_layer(network: nn.Module, side: int, min_grid: int = MIN_GRID) -> tuple[str, nn.Module]:
    """The name and module of the feature map ``network`` is explained at, for input ``side``: the last module to
    finish, called once, whose output is (N, C, H, W) with H and W ≥ ``min_grid`` — or, where none is, with H·W > 1
    (a module called twice cannot be hooked unambiguously)."""
    calls: dict[str, int] = {}
    finished: list[tuple[str, tuple | None]] = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            finished.append((name, tuple(output.shape) if isinstance(output, torch.Tensor) else None))

        return hook

    modules = dict(network.named_modules())
    handles = [m.register_forward_hook(record(n)) for n, m in modules.items() if n]
    try:
        with torch.no_grad():
            network(torch.zeros(1, 3, side, side))
    finally:
        for handle in handles:
            handle.remove()
    spatial = [(n, s) for n, s in finished if calls[n] == 1 and s is not None and len(s) == 4 and s[2] * s[3] > 1]
    candidates = [n for n, s in spatial if min(s[2], s[3]) >= min_grid] or [n for n, _ in spatial]
    if not candidates:
        raise ImgclfError(f"{type(network).__name__} has no spatial feature map to explain at {side} px")
    return candidates[-1], modules[candidates[-1]]


class Explainer:
    """Grad-CAM maps and overlays of a trained network (a copy of it: float32, CPU, its own hooks)."""

    method = METHOD

    def __init__(self, model: nn.Module | TransferModel, card: ModelCard) -> None:
        from captum.attr import LayerGradCam

        network = model.network if isinstance(model, TransferModel) else model
        self.network = copy.deepcopy(network).float().cpu().eval().to(memory_format=torch.contiguous_format)
        self.card = card
        name, module = saliency_layer(self.network, card.input_size)
        self.layer = f"{name} ({type(module).__name__})"  # e.g. "blocks (Sequential)": where the map is taken
        self.gradcam = LayerGradCam(self.network, module)
        self.lock = threading.Lock()  # captum hooks the module while it works: one explanation at a time

    def maps(self, images: torch.Tensor | np.ndarray, targets: list[int] | np.ndarray) -> np.ndarray:
        """Float32 maps (N, S, S) in [0, 1] of uint8 images (N, 3, S, S) for the classes ``targets`` (N,)."""
        images = torch.as_tensor(images)
        card = self.card
        x = resize_normalise(images, card.input_size, tuple(card.mean), tuple(card.std), channels_last=False)
        x.requires_grad_(True)  # a frozen backbone has no parameter that needs a gradient
        with self.lock, torch.enable_grad():
            attr = self.gradcam.attribute(x, target=[int(t) for t in targets], relu_attributions=True)
        side = images.shape[-1]
        up = F.interpolate(attr.detach().float(), size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        peak = up.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        return (up.clamp_min(0) / peak).numpy()

    def record(self) -> dict:
        """How the maps are computed (for a JSON answer or a file's caption)."""
        return {"method": self.method, "layer": self.layer, "library": "captum LayerGradCam"}


def explainable(source: str | Path | None, predictor: Predictor | None = None) -> bool:
    """True when heatmaps can be had: ``predictor`` runs in PyTorch, or ``source`` is a run directory or
    ``.safetensors`` file (PyTorch weights), not an ``.onnx`` file alone."""
    return isinstance(predictor, TorchPredictor) or (source is not None and Path(source).suffix != ".onnx")


def load_explainer(source: str | Path, predictor: Predictor | None = None) -> Explainer:
    """An explainer of the model ``source`` names: the network of ``predictor`` when it runs in PyTorch, else the
    PyTorch weights of a run directory or ``.safetensors`` file (an ``.onnx`` file alone is a one-line error)."""
    if isinstance(predictor, TorchPredictor):
        return Explainer(predictor.transfer or predictor.network, predictor.card)
    if not explainable(source):
        raise ImgclfError(f"heatmaps need the PyTorch weights: explain the run directory, not {source}")
    found = resolve_model(source, "cpu", "torch")
    return Explainer(load_network(found.card.architecture, found.card.num_classes, found.weights), found.card)


def explain_folder(path: str | Path) -> Path:
    """The folder heatmaps go to, created; a one-line error when it cannot be."""
    check_writable_folder(path, "--explain folder")
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def overlay(image: np.ndarray, heat: np.ndarray, side: int = 0) -> np.ndarray:
    """A uint8 (side, side, 3) picture of a uint8 (3, S, S) ``image`` with the colour map of ``heat`` (S, S) in
    [0, 1] over it; ``side`` 0: the image's own, enlarged to :data:`DISPLAY_SIDE` when smaller."""
    from matplotlib import colormaps

    side = side or max(image.shape[-1], DISPLAY_SIDE)
    base = np.asarray(Image.fromarray(np.transpose(image, (1, 2, 0))).resize((side, side), Image.BICUBIC), np.float32)
    heat = torch.as_tensor(heat, dtype=torch.float32)[None, None]
    heat = F.interpolate(heat, size=(side, side), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    colour = colormaps[COLOURS](heat)[..., :3] * 255
    alpha = MAX_ALPHA * heat[..., None]
    return np.clip((1 - alpha) * base + alpha * colour, 0, 255).round().astype(np.uint8)


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) picture as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def overlay_name(path: str) -> str:
    """The overlay file of the input ``path``: its stem and a digest of the whole path (two inputs of one name in
    different folders get different files; a resumed run writes the same names)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem)[:80].lstrip(".") or "image"
    return f"{stem}-{hashlib.sha1(path.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}.png"


def write_overlays(
    explainer: Explainer, images: np.ndarray, targets: np.ndarray, paths: list[str], folder: Path
) -> list[str]:
    """Write the Grad-CAM overlay of each image (for its class in ``targets``) into ``folder``; their file paths."""
    written = []
    for image, heat, path in zip(images, explainer.maps(images, targets), paths, strict=True):
        out = folder / overlay_name(path)
        data = png_bytes(overlay(image, heat))
        atomic_write(out, lambda tmp, data=data: tmp.write_bytes(data))
        written.append(str(out))
    return written
