"""Image embeddings from a frozen ImageNet backbone: the representation every audit check works on.

Each embedding is the mean of the backbone's pooled features of the image and of its mirror image, L2-normalised:
a horizontally flipped copy then has exactly the same embedding, and a near copy a near one. The backbone's
features go through the activation cache (``data/features.py``), so a second audit of the same images reads them
from disk.
"""

from dataclasses import dataclass

import numpy as np
import torch

from imgclf.core.device import resolve_precision, select_device
from imgclf.data.features import ActivationCache
from imgclf.data.images import ImageSet
from imgclf.models.backbones import create_backbone, preprocessing, split_backbone


@dataclass
class Embedder:
    """A pretrained timm backbone cut after its global pooling, with the activation cache of its features."""

    backbone: str
    side: int  # the side images are resized to before the backbone
    cache_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        model = create_backbone(self.backbone, num_classes=0, pretrained=True)
        prefix, _ = split_backbone(model, "0")  # nothing unfrozen: the prefix ends with the pooled features
        prep = preprocessing(model)
        device = select_device(self.device)
        precision = resolve_precision(self.precision, device)
        self.cache = ActivationCache(
            self.cache_dir, prefix.eval(), self.side, prep.mean, prep.std, device, precision, progress=self.progress
        )
        self.cache.fast_min_images = 0  # one engine for every set: a few altered copies compare with their originals

    def embed(self, images: ImageSet, desc: str = "embeddings") -> np.ndarray:
        """(N, D) float32 unit vectors: the mean of each image's and its mirror's pooled features, normalised."""
        both = self.cache.get(images, flip=False, desc=desc).float() + self.cache.get(images, flip=True, desc=desc)
        return torch.nn.functional.normalize(both.float().flatten(1), dim=1).numpy()

    def record(self) -> dict:
        """How the embeddings were computed: backbone, side, precision, engines and cache use."""
        record = self.cache.record()
        precision = "fp32" if record["engines"] == ["onnxruntime"] else self.cache.precision  # onnxruntime: fp32
        return {"backbone": self.backbone, "side": self.side, "precision": precision, **record}
