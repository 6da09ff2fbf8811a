"""Uploaded images as pipeline Sources: the `image` parts of a multipart form, or a raw body.

The body arrives already read, never past CLASSIFIER_MAX_UPLOAD_BYTES (`api.read_body`),
and is parsed from memory: werkzeug's form parser never touches the socket, so no
request-wide limit has to be set that functions-framework would trip over later.
"""

from __future__ import annotations

import functools
import io

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from .config import Settings
from .errors import BadRequest, TooLarge, TooManyUrls
from .source import Source

FIELD = "image"  # curl -F image=@robin.jpg -F image=@crow.png
DEFAULT_NAME = "upload"  # a raw body without ?name=, or a part without a filename
OTHER_FIELDS = 16  # form parts beyond CLASSIFIER_MAX_URLS images that we still parse


def multipart_sources(body: bytes, options: dict[str, str], settings: Settings) -> list[Source]:
    """One Source per `image` part, named by its filename; other fields are ignored.

    The body's own limit bounds the fields' memory; the count of parts is bounded
    here, since many tiny parts cost far more to hold than their bytes.
    """
    max_parts = settings.max_urls + OTHER_FIELDS
    parser = FormDataParser(silent=False, max_form_parts=max_parts)
    try:
        _, _, files = parser.parse(io.BytesIO(body), "multipart/form-data", len(body), options)
    except RequestEntityTooLarge:
        raise TooManyUrls(
            f"more than {max_parts} form parts; at most {settings.max_urls} images per request"
        ) from None
    except ValueError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    parts = files.getlist(FIELD)
    if not parts:
        raise BadRequest(f"the form has no {FIELD!r} file field: send e.g. -F {FIELD}=@photo.jpg")
    sources = []
    for part in parts:
        try:  # a large part is spooled to a temporary file: read it, then let it go
            sources.append(image_source(part.filename or DEFAULT_NAME, part.stream.read(), settings.max_image_bytes))
        finally:
            part.close()
    return sources


def image_source(name: str, data: bytes, max_bytes: int) -> Source:
    """Uploaded bytes as a Source, held to the same per-image limit as a download."""
    return Source(name, functools.partial(_within, data, max_bytes))


def _within(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise TooLarge(f"image is {len(data)} bytes, the limit is {max_bytes}")
    return data
