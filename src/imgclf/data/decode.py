"""Decode one image file of a user's folder into a uint8 (3, S, S) array — or say in a few words why it cannot be.

Grayscale, palette, RGBA (composited on white), CMYK and 16-bit images become RGB; the EXIF orientation is applied;
JPEGs decode in draft mode (DCT scaling) near the target side, so large photos decode several times faster. The
file's bytes are hashed on the way (SHA-1), which finds identical files in two splits. This module imports no torch:
the preparation's worker processes start in a fraction of a second.
"""

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 512 << 20  # an image file over 512 MiB is skipped, not read
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class BadImage(Exception):
    """A file that is not a usable image; the message is the reason, e.g. 'truncated'; ``too_large``: an image over
    the pixel limit (a server answers 413 to it, 422 to the others)."""

    def __init__(self, reason: str, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: 16-bit and float scaled down, transparency composited on white."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0)
        scale = 255 / 65535 if top > 255 else 1.0
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def fit_square(image: Image.Image, side: int, policy: str) -> Image.Image:
    """``image`` as a ``side``×``side`` square: ``crop`` (shorter side to ``side``, centre crop), ``pad`` (longer side
    to ``side``, centred on black) or ``stretch``; Pillow's antialiased bilinear filter."""
    w, h = image.size
    if policy == "stretch":
        return image.resize((side, side), Image.BILINEAR, reducing_gap=3.0)
    if policy == "crop":  # resample the central square only: a 1×20,000 strip never becomes a huge image
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        return image.resize((side, side), Image.BILINEAR, box=box, reducing_gap=3.0)
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new("RGB", (side, side))
    canvas.paste(image.resize(size, Image.BILINEAR, reducing_gap=3.0), ((side - size[0]) // 2, (side - size[1]) // 2))
    return canvas


def decode(data: bytes, side: int, policy: str, max_pixels: int | None = None) -> np.ndarray:
    """The image in ``data`` as a uint8 (3, side, side) array; :class:`BadImage` with the reason otherwise (an image
    over ``max_pixels`` is refused from its header, before any pixel is decoded)."""
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # over Pillow's pixel limit: refused
        try:
            image = Image.open(io.BytesIO(data))
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise BadImage(f"too many pixels ({image.width}×{image.height}; the limit is {max_pixels:,})", True)
            if image.format == "JPEG":
                image.draft(None, (side, side))  # decode at the smallest DCT scale still ≥ side
            ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
            image.load()
            image = fit_square(to_rgb(image), side, policy)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            limit = f"over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels"
            raise BadImage(f"decompression bomb ({limit})", too_large=True) from None
        except BadImage:
            raise
        except UnidentifiedImageError:
            raise BadImage("not an image") from None
        except OSError as exc:
            raise BadImage("truncated" if "truncated" in str(exc) else f"undecodable ({exc})") from None
        except Exception as exc:  # Pillow raises many types for damaged files (SyntaxError, ValueError, …)
            raise BadImage(f"undecodable ({type(exc).__name__}: {exc})") from None
    return np.array(image, dtype=np.uint8).transpose(2, 0, 1)  # a copy: writable, as torch wants it


def image_header(path: str | Path) -> tuple[tuple[int, int], str, str] | None:
    """(width, height), mode and format read from an image file's header (nothing decoded); None if unreadable.
    Width and height as displayed: swapped for an EXIF rotation of 90°."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn the image a quarter
                w, h = h, w
            return (w, h), image.mode, image.format or "?"
    except Exception:  # unreadable files are counted by the preparation
        return None


def decode_file(path: str | Path, side: int, policy: str, digest: bool = True) -> tuple[np.ndarray | None, str, str]:
    """(image or None, SHA-1 of the bytes ('' unless ``digest``), reason it was skipped or '') for the file at
    ``path``."""
    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            return None, "", f"too large (over {MAX_FILE_BYTES >> 20} MiB)"
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, "", f"unreadable ({exc.strerror or exc})"
    except MemoryError:
        return None, "", "too large to read into memory"
    sha1 = hashlib.sha1(data).hexdigest() if digest else ""
    try:
        return decode(data, side, policy), sha1, ""
    except BadImage as exc:
        return None, sha1, str(exc)


def decode_rows(array_path: str, start: int, paths: list[str], side: int, policy: str) -> list[tuple[str, str]]:
    """Worker: decode ``paths`` into rows ``start…`` of the .npy array at ``array_path``; (SHA-1, reason) per file."""
    array = np.load(array_path, mmap_mode="r+")
    results = []
    for offset, path in enumerate(paths):
        image, digest, reason = decode_file(path, side, policy)
        if image is not None:
            array[start + offset] = image
        results.append((digest, reason))
    array.flush()
    del array
    return results
