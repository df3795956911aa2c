"""Image decoding that always yields 3-channel RGB and fails with a message that names the file.

The data spec (G3) requires ``PIL.Image.open(path).convert('RGB')`` for every image: several public
releases skip the conversion, so 1-channel or palette files break normalisation deep inside a batch.
``thermal_gray3`` decodes as grayscale and replicates to three channels (RGBT-PEDE behaviour for
pseudo-coloured thermal images).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vireid.errors import DataError


def load_image(path: str | Path, *, gray3: bool = False) -> Image.Image:
    """Decode ``path`` fully and return an RGB ``PIL.Image``.

    Args:
        path: image file.
        gray3: convert to luminance first, then back to 3 equal channels.

    Raises:
        DataError: the file is missing, not an image, truncated or otherwise corrupt.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # force full decoding here so truncation is reported with this file's name
            if gray3:
                return img.convert("L").convert("RGB")
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(
            f"image {path} does not exist.", fix="check the dataset root and that the download is complete."
        ) from None
    except UnidentifiedImageError:
        raise DataError(f"{path} is not a readable image.", fix="re-extract or delete this file.") from None
    except OSError as exc:  # truncated or corrupt data
        raise DataError(f"image {path} is corrupt or truncated ({exc}).", fix="re-extract this file.") from None
