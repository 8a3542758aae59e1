"""Near duplicates: pairs of images whose embeddings lie closer than copies of one image do after the alterations
that copies meet in the wild, and exact copies by their pixels. A pair across splits is a leak.

The threshold is calibrated on the dataset itself: a seeded sample of its images is altered (:func:`alter`: resized
by ±25%, re-saved as JPEG at quality 50–70, shifted by 1–2 px, brightened or darkened by up to 15%, mirrored), the
altered copies are embedded, and the threshold is the :data:`COPY_QUANTILE` quantile of the distances between each
image and its copy, times :data:`MARGIN`.
"""

import hashlib
import io

import numpy as np
from PIL import Image, ImageEnhance

CALIBRATION_IMAGES = 500
COPY_QUANTILE = 0.99
MARGIN = 1.0


def alter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of uint8 (3, H, W) ``image`` as re-publishing alters one: resized by a random 75–125% (then back to
    H × W), re-encoded as JPEG at quality 50–70, shifted 1–2 px, brightness ×0.85–1.15, mirrored half the time."""
    pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    h, w = image.shape[1:]
    scale = rng.uniform(0.75, 1.25)
    pil = pil.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BICUBIC).resize((w, h), Image.BICUBIC)
    pil = ImageEnhance.Brightness(pil).enhance(rng.uniform(0.85, 1.15))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=int(rng.integers(50, 71)))
    out = np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
    dy, dx = (rng.integers(1, 3) * rng.choice([-1, 1]) for _ in range(2))
    out = np.pad(out, ((0, 0), (2, 2), (2, 2)), mode="edge")[:, 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]
    return np.ascontiguousarray(out[:, :, ::-1] if rng.random() < 0.5 else out)


def copy_distances(originals: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """Distance between each original's embedding and its altered copy's, row by row."""
    return np.linalg.norm(originals - copies, axis=1)


def threshold_from(distances: np.ndarray, quantile: float = COPY_QUANTILE, margin: float = MARGIN) -> float:
    """The near-duplicate threshold: the ``quantile`` of the image-to-copy ``distances``, times ``margin``."""
    return float(np.quantile(distances, quantile) * margin)


def pixel_digests(images, chunk: int = 1024) -> list[str]:
    """SHA-1 of each uint8 (3, H, W) image's pixels (``images``: sliceable into uint8 tensors, read ``chunk`` at a
    time): equal for exact copies."""
    digests = []
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk])
        digests += [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in block]
    return digests


def near_pairs(
    distances: np.ndarray, indices: np.ndarray, threshold: float, splits: np.ndarray, exact: np.ndarray
) -> list[dict]:
    """Each pair of images within ``threshold`` of each other once, from the neighbour lists (``distances``,
    ``indices``, nearest first): leaks (across ``splits``) first, then by distance. ``exact``: a group id per image,
    equal for exact copies (their pair counts as exact whatever its distance)."""
    pairs = {}
    for i, j in zip(*np.nonzero((distances <= threshold) | (exact[indices] == exact[:, None])), strict=True):
        a, b = sorted((i, int(indices[i, j])))
        if a != b:
            pairs[a, b] = float(distances[i, j])
    rows = [
        {"a": a, "b": b, "distance": d, "leak": bool(splits[a] != splits[b]), "exact": bool(exact[a] == exact[b])}
        for (a, b), d in pairs.items()
    ]
    return sorted(rows, key=lambda r: (not r["leak"], not r["exact"], r["distance"]))


def exact_groups(digests: list[str]) -> np.ndarray:
    """A group id per image: the index of the first image with the same digest."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(d, i) for i, d in enumerate(digests)], dtype=np.int64)
