"""Near duplicates: pairs of images that are one picture altered (``copies.py`` measures it), and exact copies by
their pixels. A pair across splits is a leak.

The threshold is calibrated on the dataset itself: a seeded sample of its images is altered as copies are
(:func:`alter`: each of resized by ±25%, brightness ±15%, JPEG quality 50–70, shifted 1–2 px, mirrored, with
probability ½) and each copy is compared with its original and with its nearest other images. The threshold lies
halfway from the distance within which :data:`COPY_QUANTILE` of the copies came to their originals to the distance
within which :data:`IMPOSTOR_QUANTILE` of them came to an unrelated image (its nearest impostor), never beyond the
latter. A low quantile, not the least: the data holds copies of its own, and an image as close to an original as
its copies come counts as one, but a real copy a little farther would pose as a copy's impostor.
"""

import hashlib
import io

import numpy as np
from PIL import Image, ImageEnhance

CALIBRATION_IMAGES = 500
COPY_QUANTILE = 0.99
IMPOSTOR_QUANTILE = 0.01


EDITS = ("resize", "brightness", "jpeg", "shift", "mirror")


def alter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of uint8 (3, H, W) ``image`` as re-publishing alters one: each of :data:`EDITS` with probability ½ (at
    least one) — resized by a random 75–125% (then back to H × W), brightness ×0.85–1.15, re-encoded as JPEG at
    quality 50–70, shifted 1–2 px, mirrored."""
    chosen = [e for e in EDITS if rng.random() < 0.5] or [EDITS[int(rng.integers(len(EDITS)))]]
    pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    h, w = image.shape[1:]
    if "resize" in chosen:
        scale = rng.uniform(0.75, 1.25)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        pil = pil.resize(size, Image.BICUBIC).resize((w, h), Image.BICUBIC)
    if "brightness" in chosen:
        pil = ImageEnhance.Brightness(pil).enhance(rng.uniform(0.85, 1.15))
    if "jpeg" in chosen:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(rng.integers(50, 71)))
        pil = Image.open(buffer).convert("RGB")
    out = np.asarray(pil).transpose(2, 0, 1)
    if "shift" in chosen:
        dy, dx = (int(rng.integers(1, 3) * rng.choice([-1, 1])) for _ in range(2))
        out = np.pad(out, ((0, 0), (2, 2), (2, 2)), mode="edge")[:, 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]
    return np.ascontiguousarray(out[:, :, ::-1] if "mirror" in chosen else out)


def impostor_distances(distances: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Per copy (row), the smallest of its distances to candidate images (columns) that are not copies of its
    original (``same``: True where the candidate is the original or a copy of it)."""
    return np.where(same, np.inf, distances).min(1)


def threshold_from(copy: np.ndarray, impostor: np.ndarray) -> float:
    """The near-duplicate threshold: halfway from the :data:`COPY_QUANTILE` of the image-to-copy distances ``copy``
    to the :data:`IMPOSTOR_QUANTILE` of the copies' distances to their nearest unrelated image ``impostor``, and
    never beyond the latter."""
    nearest = float(np.quantile(impostor, IMPOSTOR_QUANTILE))
    return min(nearest, (float(np.quantile(copy, COPY_QUANTILE)) + nearest) / 2)


def pixel_digests(images, chunk: int = 1024) -> list[str]:
    """SHA-1 of each uint8 (3, H, W) image's pixels (``images``: sliceable into uint8 tensors, read ``chunk`` at a
    time): equal for exact copies."""
    digests = []
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk])
        digests += [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in block]
    return digests


def near_pairs(
    pairs: np.ndarray, distances: np.ndarray, threshold: float, splits: np.ndarray, exact: np.ndarray
) -> list[dict]:
    """The candidate ``pairs`` (P, 2) within ``threshold`` by their ``distances`` (P,), or exact copies
    (``exact``: a group id per image, equal for the same pixels): leaks (across ``splits``) first, then exact
    copies, then nearest first."""
    a, b = pairs[:, 0], pairs[:, 1]
    same = exact[a] == exact[b]
    rows = [
        {
            "a": int(a[i]),
            "b": int(b[i]),
            "distance": float(distances[i]),
            "leak": bool(splits[a[i]] != splits[b[i]]),
            "exact": bool(same[i]),
        }
        for i in np.flatnonzero(same | (distances <= threshold))
    ]
    return sorted(rows, key=lambda r: (not r["leak"], not r["exact"], r["distance"]))


def exact_groups(digests: list[str]) -> np.ndarray:
    """A group id per image: the index of the first image with the same digest."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(d, i) for i, d in enumerate(digests)], dtype=np.int64)
