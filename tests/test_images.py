"""Decoding strangers' bytes: every mode becomes the RGB the model expects, and every bad
image (truncated, not an image, a bomb, too big, a refused format) is an item error."""

from __future__ import annotations

import gc
import io
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from PIL._util import DeferredError

from conftest import ROOT, python_env
from fixtures import images as test_images
from function import images
from function.budget import Budget
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


@pytest.mark.parametrize(
    "image, params, expected",
    [
        # a colour key (PNG tRNS) is transparency like a palette's: keyed pixels go white
        (halves((10, 200, 40), (1, 2, 3)), {"transparency": (10, 200, 40)}, (128, 128, 129)),
        (Image.new("RGB", (32, 32), (10, 200, 40)), {"transparency": (1, 2, 3)}, (10, 200, 40)),
        (Image.new("L", (32, 32), 77), {"transparency": 77}, (255, 255, 255)),
    ],
    ids=["rgb-half-keyed", "rgb-key-unused", "l-keyed"],
)
def test_a_colour_key_is_flattened_on_white(image, params, expected):
    pixels = decode(encode(image, "PNG", **params))
    assert close(mean_colour(pixels), expected, tolerance=4), mean_colour(pixels)


@pytest.mark.parametrize("top", [1.0, 1000.0], ids=["unit-range", "wide-range"])
def test_float_greyscale_tiffs_are_decoded(top):
    """Mode F, as scientific TIFFs store it: scaled from [0, 1], or from [0, 65535] above that."""
    pixels = decode(encode(Image.fromarray(np.full((32, 32), top / 2, np.float32), "F"), "TIFF"))
    grey = 127 if top == 1.0 else round(500 / 65535 * 255)
    assert close(mean_colour(pixels), (grey, grey, grey), tolerance=1), mean_colour(pixels)


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
    data = test_images.bomb_png(side, side)
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


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # our check, not Pillow's warning
def test_a_bomb_fails_alone_in_the_pipeline(use_stand_in, stand_in):
    bomb = stand_in.server.add("/images/bomb.png", test_images.bomb_png(30_000, 30_000), content_type="image/png")
    good = stand_in.image_url("beside-the-bomb.png", (10, 10, 240))
    results = Classifier(load_settings()).classify_urls([bomb, good])["results"]
    assert results[0]["error"]["code"] == "image_too_large"
    assert results[1]["predictions"][0]["label"] == "Cyanistes caeruleus"


def test_plugins_that_raise_other_than_oserror_make_a_not_an_image():
    """Pillow's DDS plugin raises NotImplementedError for compressions it lacks (found in
    real corpora): still this image's `not_an_image`, never a crash of the item."""
    assert isinstance(decode_error(test_images.dds_unknown_fourcc()), NotAnImage)


@pytest.mark.parametrize("error", [NotImplementedError("no"), IndexError("tile"), ZeroDivisionError()])
def test_decoders_that_raise_anything_make_a_not_an_image(monkeypatch, error):
    def broken(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(Image.Image, "resize", broken)
    assert isinstance(decode_error(encode(Image.new("RGB", (64, 64)))), NotAnImage)


@pytest.fixture
def images_made(monkeypatch) -> Iterator[list[weakref.ref]]:
    """Weak references to every Pillow image created from now on (opened, converted,
    resized, composited); the cycle collector is off, so what lives is held by something."""
    made: list[weakref.ref] = []
    real = Image.Image.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(Image.Image, "__init__", init)
    gc.disable()
    try:
        yield made
    finally:
        gc.enable()


def holding_pixels(made: list[weakref.ref]) -> list[Image.Image]:
    """The images still alive whose core `close` has not destroyed."""
    alive = [image for image in (ref() for ref in made) if image is not None]
    return [image for image in alive if getattr(image, "_im", None) is not None
            and not isinstance(image._im, DeferredError)]


def test_a_failure_midway_leaves_no_image_holding_pixels(images_made, monkeypatch):
    """The error's traceback keeps its frames and their images alive: closed, they hold
    no pixels (a 40-megapixel image would hold 160 MB until the collector ran)."""
    monkeypatch.setattr(Image, "alpha_composite", lambda *images: (_ for _ in ()).throw(OSError("broken")))
    error = decode_error(encode(palette_with_transparent_index()))
    assert isinstance(error, NotAnImage)
    assert len(images_made) >= 3
    assert holding_pixels(images_made) == []


# --- memory -----------------------------------------------------------------------------


def test_the_pixel_budget_lets_no_more_pixels_in_at_once():
    budget = Budget(10)
    held, peak, lock = [0], [0], threading.Lock()

    def decode_like(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                held[0] += min(pixels, budget.capacity)
                peak[0] = max(peak[0], held[0])
            time.sleep(0.01)  # a chance for the others to overlap
            with lock:
                held[0] -= min(pixels, budget.capacity)

    threads = [threading.Thread(target=decode_like, args=(pixels,)) for pixels in [6, 6, 5, 5, 4, 3, 15, 2] * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)  # an image over the budget still went, alone
    assert 0 < peak[0] <= 10


MEASURE = """
import sys, threading
from function import images
from function.budget import Budget
data = open(sys.argv[1], "rb").read()
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
before = hwm()
budget = Budget(int(sys.argv[3]))
decode = lambda: images.decode(data, (224, 224), int(sys.argv[3]), frozenset({"PNG"}), budget)
threads = [threading.Thread(target=decode) for _ in range(int(sys.argv[2]))]
[t.start() for t in threads]
[t.join() for t in threads]
print(hwm() - before)
"""


@pytest.mark.parametrize(
    "mode, threads, bound",
    [
        ("RGB", 4, 2.0),  # four at once take turns: about 1 (unbudgeted, with copies: 12)
        ("RGBA", 1, 2.5),  # shrunk before flattening on white: about 2 (it took 6)
        ("I;16", 1, 2.5),  # scaled in place to 8 bits: about 2 (through float64 it took 7)
    ],
)
def test_decoding_big_images_stays_within_a_few_copies_of_one(tmp_path, mode, threads, bound):
    """Peak memory of decoding in a fresh process, in units of one decoded RGBA image
    (4 bytes a pixel) as large as the limit allows: tiny files, huge decodes."""
    side = 4000
    image = Image.fromarray(np.full((side, side), 30000, np.uint16)) if mode == "I;16" else Image.new(mode, (side, side))
    path = tmp_path / "big.png"
    image.save(path)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(threads), str(side * side)],
                          cwd=ROOT, env=python_env({}), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    one_image_mb = side * side * 4 / 2**20
    assert float(done.stdout) < bound * one_image_mb
