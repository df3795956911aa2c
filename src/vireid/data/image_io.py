"""Image decoding that always yields 3-channel RGB and fails with a message that names the file.

The data spec (G3) requires ``PIL.Image.open(path).convert('RGB')`` for every image: several public
releases skip the conversion, so 1-channel or palette files break normalisation deep inside a batch.
``thermal_gray3`` decodes as grayscale and replicates to three channels (RGBT-PEDE behaviour for
pseudo-coloured thermal images).

High bit-depth images (16-bit PNG/TIFF, 32-bit integer or float TIFF; common for raw thermal frames) are
not passed to ``convert('RGB')``: Pillow clips every value above 255 to white, so a raw thermal frame
becomes a solid white image. They are rescaled to 8 bits by :func:`to_8bit` first (see there for how).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vireid.errors import DataError, describe_os_error

# Single-channel modes whose values do not fit in 8 bits (Pillow's names).
HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def to_8bit(img: Image.Image, path: str | Path = "<image>") -> Image.Image:
    """Rescale a high bit-depth single-channel image to 8-bit grayscale (mode ``L``) by its own range.

    How: a linear min-max stretch per image, ``round(255 * (v - min) / (max - min))``; a constant image
    becomes all zeros. Why per image rather than a fixed ``v / 257``: raw thermal sensors store 12-14
    significant bits, usually in a narrow band of the 16-bit range (e.g. 7,000-9,000 counts), which a fixed
    scale turns into a nearly uniform gray; the per-image stretch is what thermal viewers do (automatic
    gain) and keeps the image's contrast. 8-bit images are never rescaled.

    Raises:
        DataError: a float image holds NaN or infinite values.
    """
    values = np.asarray(img, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(
            f"image {path} ({img.mode}) holds NaN or infinite values.",
            fix="convert it to an 8- or 16-bit image with finite values.",
        )
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    scaled = np.zeros(values.shape, dtype=np.uint8)
    if high > low:
        scaled = np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(img: Image.Image, path: str | Path = "<image>", *, gray3: bool = False) -> Image.Image:
    """A new RGB image: high bit-depth images through :func:`to_8bit`, others by ``convert('RGB')``."""
    if img.mode in HIGH_DEPTH_MODES:
        return to_8bit(img, path).convert("RGB")
    if gray3:
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, *, gray3: bool = False) -> Image.Image:
    """Decode ``path`` fully and return an RGB ``PIL.Image``.

    Args:
        path: image file.
        gray3: convert to luminance first, then back to 3 equal channels.

    16-bit, 32-bit integer and float single-channel images are rescaled to 8 bits with :func:`to_8bit`
    (a per-image min-max stretch) and replicated to three channels.

    Raises:
        DataError: the file is missing, unreadable, not an image, truncated or otherwise corrupt.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # force full decoding here so truncation is reported with this file's name
            return to_rgb(img, path, gray3=gray3)
    except FileNotFoundError:
        raise DataError(
            f"image {path} does not exist.", fix="check the dataset root and that the download is complete."
        ) from None
    except UnidentifiedImageError:
        raise DataError(f"{path} is not a readable image.", fix="re-extract or delete this file.") from None
    except OSError as exc:
        if exc.errno is not None:  # a file-system error (permission, symbolic-link loop, I/O), not bad data
            raise describe_os_error(exc, path, cls=DataError) from None
        # truncated or corrupt data
        raise DataError(f"image {path} is corrupt or truncated ({exc}).", fix="re-extract this file.") from None
