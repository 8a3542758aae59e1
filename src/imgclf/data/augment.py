"""Per-sample augmentation applied to whole batches of uint8 images (no per-image PIL calls).

``fast``: random crop from a 4-pixel reflect-padded image, horizontal flip, optional cutout — on uint8.
``reference``: the reference study's Keras recipe — rotation ±15°, zoom ±10%, shifts ±10%, horizontal flip —
as one random affine warp per image (``affine_grid``/``grid_sample``, edge pixels repeated like Keras' "nearest").
Every function maps uint8 (B, C, H, W) to float32 in [0, 1] and draws its randomness from ``generator``.
"""

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("fast", "reference", "none")


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Crop each image at a random offset from its reflect-padded copy (output is channels_last)."""
    b, _, h, w = images.shape
    padded = (
        F.pad(images, (pad, pad, pad, pad), mode="reflect")
        if images.is_floating_point()
        else (F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype))
    )
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) → NCHW view, channels_last strides


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left to right."""
    flip = torch.rand(len(images), generator=generator, device=generator.device).to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one random ``size``×``size`` square per image (DeVries & Taylor 2017)."""
    b, _, h, w = images.shape
    cy = torch.randint(0, h, (b, 1, 1), generator=generator, device=generator.device).to(images.device)
    cx = torch.randint(0, w, (b, 1, 1), generator=generator, device=generator.device).to(images.device)
    ys = torch.arange(h, device=images.device)[None, :, None]
    xs = torch.arange(w, device=images.device)[None, None, :]
    hole = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    return images * ~hole[:, None]


def random_affine(images: torch.Tensor, generator: torch.Generator, rotation=15.0, zoom=0.1, shift=0.1) -> torch.Tensor:
    """Warp each float image by its own random rotation, zoom and shift, repeating edge pixels."""
    b = len(images)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator, device=generator.device) * (hi - lo) + lo).to(images.device)

    angle = uniform(-rotation, rotation) * math.pi / 180
    scale = uniform(1 - zoom, 1 + zoom)  # sampling-grid scale: >1 zooms out, <1 zooms in
    tx, ty = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)  # grid units span [-1, 1]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(images: torch.Tensor, kind: str, generator: torch.Generator, cutout_size: int = 0) -> torch.Tensor:
    """Apply augmentation ``kind`` to a uint8 batch and return float32 images in [0, 1]."""
    if kind == "fast":
        out = random_flip(random_crop(images, 4, generator), generator)
        out = out.float().div_(255)
    elif kind == "reference":
        out = random_affine(images.float().div_(255), generator)
        out = random_flip(out, generator)
    elif kind == "none":
        out = images.float().div_(255)
    else:
        raise ValueError(f"unknown augmentation '{kind}' (available: {', '.join(AUGMENTATIONS)})")
    if cutout_size:
        out = cutout(out, cutout_size, generator)
    return out
