"""Turn downloaded bytes into the model's input: any mode in, RGB uint8 of one size out."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator

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
    budget: PixelBudget | None = None,
) -> np.ndarray:
    """Decode, orient, flatten alpha on white and resize to `size` (width, height);
    the decoded pixels count against `budget` while they are in memory."""
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
            if image.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when the result is still >= size: much less work.
                image.draft("RGB", size)
            # The whole body to the decoder in one call: Pillow hands it over 64 KiB at a time,
            # each piece a copy and a release and re-take of the GIL that the other requests'
            # threads want; one call serves 2-4 % more images/s (docs/performance.md).
            image.decodermaxblock = len(data)
            with budget.hold(image.width * image.height) if budget else contextlib.nullcontext():
                return _to_array(image, size)
        except (OSError, ValueError, SyntaxError) as exc:
            raise NotAnImage(f"cannot decode image: {exc}") from None


class PixelBudget:
    """How many decoded pixels the process holds at once. A PNG of a few kilobytes can
    decode to 40 megapixels (over 100 MB); many at once would exhaust the memory, so
    beyond the budget, decodes wait their turn. One image alone always may go."""

    def __init__(self, pixels: int):
        self.capacity = pixels
        self._free = pixels
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            with self._changed:
                self._free += pixels
                self._changed.notify_all()


def _to_array(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Every full-size step is done in place or skipped, and the image is shrunk before
    transparency is flattened: a 40-megapixel RGBA PNG costs two full-size copies, not five."""
    image = ImageOps.exif_transpose(image, in_place=True) or image
    image = _resizable(image)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)  # LA/RGBA: premultiplied
    return np.asarray(_on_white(image), dtype=np.uint8)


def _resizable(image: Image.Image) -> Image.Image:
    """L, LA, RGB or RGBA (resize treats palettes and 1-bit as nearest-neighbour, and
    cannot do 16-bit): 16-bit and float scaled to 8 bits, palettes expanded."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float32)  # scaled in place: one full-size copy
        top = 65535.0 if image.mode != "F" or pixels.max() > 1.0 else 1.0
        pixels *= 255.0 / top
        return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8), "L")
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode == "1":
        return image.convert("L")
    transparent = image.mode in ("PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if transparent else "RGB")


def _on_white(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white."""
    if image.mode in ("LA", "RGBA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
