"""Turn downloaded bytes into the model's input: any mode in, RGB uint8 of one size out."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLarge, NotAnImage, UnsupportedFormat

# Every image is checked against CLASSIFIER_MAX_IMAGE_PIXELS below, before any pixel is
# decoded, as a per-image error. Pillow's process-wide check would only warn up to twice
# its own limit, so it is switched off on purpose rather than left half on.
Image.MAX_IMAGE_PIXELS = None

WHITE = (255, 255, 255)


def decode(
    data: bytes,
    size: tuple[int, int],
    max_pixels: int,
    allowed_formats: frozenset[str],
) -> np.ndarray:
    """Decode, orient, flatten alpha on white and resize to `size` (width, height)."""
    if not data:
        raise NotAnImage("the body is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImage("the body is not an image in a format we can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"cannot read image: {exc}") from None
    with image:
        if image.format not in allowed_formats:
            raise UnsupportedFormat(
                f"{image.format} images are not accepted (allowed: {', '.join(sorted(allowed_formats))})"
            )
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels, the limit is {max_pixels}"
            )
        try:
            return _to_array(image, size)
        except (OSError, ValueError, SyntaxError) as exc:
            raise NotAnImage(f"cannot decode image: {exc}") from None


def _to_array(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    if image.format == "JPEG":
        # Decode at 1/2, 1/4 or 1/8 scale when the result is still >= size: much less work.
        image.draft("RGB", size)
    image = ImageOps.exif_transpose(image)
    rgb = _to_rgb(image)
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any mode: 16-bit and float scaled, transparency composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" or pixels.max() > 1.0 else 1.0
        image = Image.fromarray(np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
