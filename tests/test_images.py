"""Decoding strangers' bytes: every mode becomes the RGB the model expects, and every bad
image (truncated, not an image, a bomb, too big, a refused format) is an item error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fixtures import images as test_images
from function import images
from function.config import load_settings
from function.errors import ImageTooLarge, ItemError, NotAnImage, UnsupportedFormat
from function.pipeline import Classifier

SIZE = (224, 224)
DEFAULTS = load_settings({})


def decode(data: bytes, **env: str) -> np.ndarray:
    config = load_settings(env) if env else DEFAULTS
    return images.decode(data, SIZE, config.max_image_pixels, config.allowed_formats)


def decode_error(data: bytes, **env: str) -> ItemError:
    with pytest.raises(ItemError) as caught:
        decode(data, **env)
    return caught.value


def encode(image: Image.Image, format: str = "PNG", **params) -> bytes:
    return test_images.encode(image, format, **params)


def mean_colour(pixels: np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(c)) for c in pixels.reshape(-1, 3).mean(axis=0))


def close(colour, expected, tolerance=3) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected))


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def halves(left, right, size=(64, 32)) -> Image.Image:
    """Left half one colour, right half another: shows which way an image was turned."""
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


# --- modes ----------------------------------------------------------------------------


def palette_with_transparent_index() -> Image.Image:
    image = Image.new("P", (32, 32), 1)
    image.putpalette([255, 0, 0] + [0, 0, 255] + [0, 0, 0] * 254)
    image.info["transparency"] = 1  # blue is the transparent index
    return image


@pytest.mark.parametrize(
    "image, format, expected",
    [
        (Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent: white
        (Image.new("RGBA", (32, 32), (255, 0, 0, 255)), "PNG", (255, 0, 0)),
        (Image.new("RGBA", (32, 32), (0, 0, 0, 128)), "PNG", (127, 127, 127)),  # half on white
        (palette_with_transparent_index(), "PNG", (255, 255, 255)),
        (palette_with_transparent_index(), "GIF", (255, 255, 255)),
        (Image.new("L", (32, 32), 100), "PNG", (100, 100, 100)),
        (Image.new("LA", (32, 32), (0, 0)), "PNG", (255, 255, 255)),
        (Image.new("1", (32, 32), 1), "BMP", (255, 255, 255)),
        (Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", (254, 0, 0)),  # red in ink
        (Image.new("RGB", (32, 32), (10, 200, 40)), "WEBP", (10, 200, 40)),
        (Image.new("RGB", (32, 32), (10, 200, 40)), "TIFF", (10, 200, 40)),
    ],
    ids=["rgba-clear", "rgba-opaque", "rgba-half", "p-png", "p-gif", "l", "la-clear", "1-bit", "cmyk-jpeg",
         "webp", "tiff"],
)
def test_every_mode_becomes_rgb(image, format, expected):
    pixels = decode(encode(image, format, **({"quality": 95} if format == "JPEG" else {})))
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert close(mean_colour(pixels), expected, tolerance=4), mean_colour(pixels)


@pytest.mark.parametrize("level, expected", [(0, 0), (32768, 128), (65535, 255)])
def test_16_bit_png_is_scaled_not_clipped(level, expected):
    image = Image.fromarray(np.full((32, 32), level, np.uint16))
    data = encode(image)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode.startswith("I")  # Pillow really reads it as 16-bit
    assert close(mean_colour(decode(data)), (expected,) * 3, tolerance=1)


@pytest.mark.parametrize(
    "orientation, red, blue",
    [
        (1, "left", "right"),  # as stored
        (3, "right", "left"),  # to be turned 180 degrees
        (6, "top", "bottom"),  # to be turned 90 degrees clockwise: left becomes top
    ],
)
def test_exif_orientation_is_applied(orientation, red, blue):
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = decode(encode(halves((255, 0, 0), (0, 0, 255)), "JPEG", exif=exif, quality=95))
    regions = {"left": pixels[:, :100], "right": pixels[:, 124:], "top": pixels[:100], "bottom": pixels[124:]}
    assert close(mean_colour(regions[red]), (255, 0, 0), 8)
    assert close(mean_colour(regions[blue]), (0, 0, 255), 8)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert close(mean_colour(decode(buffer.getvalue())), (255, 0, 0), 4)


# --- bad images -------------------------------------------------------------------------


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


@pytest.mark.parametrize(
    "data",
    [
        b"",
        encode(test_images.photo_like(256, 256), "JPEG")[:2000],  # truncated mid-scan
        encode(test_images.photo_like(64, 64), "PNG")[:-40],  # PNG without its end
        b"<!doctype html><html><body>Not found</body></html>",  # served as image/jpeg
        SVG,
        b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,  # a JPEG signature, then noise
        bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    ],
    ids=["empty", "truncated-jpeg", "truncated-png", "html", "svg", "jpeg-noise", "noise"],
)
def test_bytes_that_are_not_a_whole_image_are_not_an_image(data):
    assert isinstance(decode_error(data), NotAnImage)


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning must not escape either
@pytest.mark.parametrize("side", [10_000, 30_000])  # between Pillow's own 1x and 2x limits, and beyond
def test_decompression_bomb_is_image_too_large(side):
    data = png_declaring(side, side)
    assert len(data) < 1000
    assert isinstance(decode_error(data), ImageTooLarge)


def test_huge_dimensions_under_the_byte_limit_are_image_too_large():
    side = int(DEFAULTS.max_image_pixels ** 0.5) + 1
    data = encode(Image.new("1", (side, side), 0))  # a real image, a few kilobytes
    assert len(data) < DEFAULTS.max_image_bytes // 100
    assert isinstance(decode_error(data), ImageTooLarge)


def test_an_image_just_under_the_pixel_limit_is_decoded():
    assert decode(encode(Image.new("L", (100, 100))), CLASSIFIER_MAX_IMAGE_PIXELS="10000").shape == (224, 224, 3)
    assert isinstance(decode_error(encode(Image.new("L", (100, 101))), CLASSIFIER_MAX_IMAGE_PIXELS="10000"),
                      ImageTooLarge)


def test_formats_outside_the_allowed_list_are_unsupported():
    png = encode(Image.new("RGB", (8, 8)))
    assert isinstance(decode_error(png, CLASSIFIER_ALLOWED_FORMATS="JPEG"), UnsupportedFormat)
    assert decode(encode(Image.new("RGB", (8, 8)), "JPEG"), CLASSIFIER_ALLOWED_FORMATS="JPEG").shape == (224, 224, 3)
    assert isinstance(decode_error(encode(Image.new("RGB", (8, 8)), "PPM")), UnsupportedFormat)  # not by default


@pytest.mark.filterwarnings("error")
def test_a_bomb_fails_alone_in_the_pipeline(use_stand_in, stand_in):
    bomb = stand_in.server.add("/images/bomb.png", png_declaring(30_000, 30_000), content_type="image/png")
    good = stand_in.image_url("beside-the-bomb.png", (10, 10, 240))
    results = Classifier(load_settings()).classify_urls([bomb, good])["results"]
    assert results[0]["error"]["code"] == "image_too_large"
    assert results[1]["predictions"][0]["label"] == "Cyanistes caeruleus"
