"""Turn downloaded bytes into the model's input: any mode in, RGB uint8 of one size out."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .budget import Budget
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
    budget: Budget | None = None,
) -> np.ndarray:
    """Decode, orient, flatten alpha on white and resize to `size` (width, height);
    the decoded pixels count against `budget` while they are in memory.

    Pillow's format plugins raise more than OSError on odd files (NotImplementedError
    for unusual DDS variants, struct.error, IndexError...): whatever they raise is this
    image's `not_an_image`, never a crash of the item."""
    if not data:
        raise NotAnImage("the body is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImage("the body is not an image in a format we can read") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise NotAnImage(f"cannot read image: {_reason(exc)}") from None
    with contextlib.closing(image):  # `with image` alone closes the file, not the pixels
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
            if image.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when the result is still >= size: much less work.
                image.draft("RGB", size)
            # The whole body to the decoder in one call: Pillow hands it over 64 KiB at a time,
            # each piece a copy and a release and re-take of the GIL that the other requests'
            # threads want; one call serves 2-4 % more images/s (docs/performance.md).
            image.decodermaxblock = len(data)
            with budget.hold(image.width * image.height) if budget else contextlib.nullcontext():
                return _to_array(image, size)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            raise NotAnImage(f"cannot decode image: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _to_array(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Every full-size step is done in place or skipped, and the image is shrunk before
    transparency is flattened: a 40-megapixel RGBA PNG costs two full-size copies, not five.
    Each image made on the way is closed as soon as the block ends, however it ends, so no
    traceback or late collection keeps its pixels alive."""
    with contextlib.ExitStack() as made:

        def step(new: Image.Image) -> Image.Image:
            if new is not image:
                made.callback(new.close)
            return new

        image = ImageOps.exif_transpose(image, in_place=True) or image
        image = step(_resizable(image))
        if image.size != size:
            image = step(image.resize(size, Image.Resampling.BILINEAR))  # LA/RGBA: premultiplied
        return np.asarray(step(_on_white(image, step)), dtype=np.uint8)


def _resizable(image: Image.Image) -> Image.Image:
    """L, LA, RGB or RGBA (resize treats palettes and 1-bit as nearest-neighbour, and
    cannot do 16-bit): 16-bit and float scaled to 8 bits, palettes expanded, and a colour
    key (`transparency` in a PNG's info, on any mode) turned into alpha."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.array(image, dtype=np.float32)  # a writable copy, scaled in place: one full-size copy
        top = 65535.0 if image.mode != "F" or pixels.max() > 1.0 else 1.0
        pixels *= 255.0 / top
        return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8), "L")
    keyed = "transparency" in image.info
    if image.mode in ("L", "RGB") and keyed:
        return image.convert("LA" if image.mode == "L" else "RGBA")
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode == "1":
        return image.convert("L")
    transparent = image.mode in ("PA", "RGBa", "La") or (image.mode == "P" and keyed)
    return image.convert("RGBA" if transparent else "RGB")


def _on_white(image: Image.Image, step) -> Image.Image:
    """RGB, with any transparency composited on white (`step` closes what is made here)."""
    if image.mode in ("LA", "RGBA"):
        rgba = step(image.convert("RGBA"))
        background = step(Image.new("RGBA", rgba.size, WHITE + (255,)))
        return step(Image.alpha_composite(background, rgba)).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
