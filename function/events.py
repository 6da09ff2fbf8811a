"""The CloudEvents front door: storage-upload events in, `io.birdclassifier.classified` out.

Knative Eventing and Eventarc POST CloudEvents to the same `classify` target as the
JSON API. An object-created event becomes one `Source` per object, fetched from the
URL `CLASSIFIER_OBJECT_URL_TEMPLATE` gives it; the shared pipeline classifies them and
the HTTP reply is a CloudEvent the Broker routes onward. A permanent failure travels
inside the reply; a transient one answers 5xx so the Broker retries. docs/events.md
lists the accepted types and the reply format.
"""

from __future__ import annotations

import dataclasses
import logging
import mimetypes
import pathlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote_plus

from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from . import fetch
from .config import Settings
from .errors import BadRequest, InvalidUrl, ItemError, StorageUnavailable, TooLarge, UnsupportedEvent
from .pipeline import Classifier, Source

logger = logging.getLogger(__name__)

REPLY_TYPE = "io.birdclassifier.classified"
REPLY_SOURCE = "/bird-classifier"

GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
GCS_SKIPPED = frozenset({
    "google.cloud.storage.object.v1.deleted",
    "google.cloud.storage.object.v1.archived",
    "google.cloud.storage.object.v1.metadataUpdated",
})
# knative-extensions/eventing-ceph's receive adapter (knative/source-minio.yaml) types an
# S3-style record "com.amazonaws." + its eventName: "s3:ObjectCreated:Put" from MinIO,
# "ObjectCreated:Put" from AWS S3 and Ceph.
S3_TYPE_PREFIX = "com.amazonaws."
# New bytes in the bucket. MinIO's other ObjectCreated actions (PutTagging, PutRetention,
# PutLegalHold, DeleteTagging) change metadata only, like every non-ObjectCreated family.
S3_UPLOADS = frozenset({
    "ObjectCreated:Put", "ObjectCreated:Post", "ObjectCreated:Copy", "ObjectCreated:CompleteMultipartUpload",
})

DEFAULT_TEMPLATES = {
    "gcs": "https://storage.googleapis.com/{bucket}/{name}",
    "s3": "https://{bucket}.s3.amazonaws.com/{name}",
}
# Content types that say nothing about the bytes: the name's extension decides.
UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# What a ce-* header value may hold unencoded (CloudEvents HTTP binding 1.0.2, 3.1.3.2).
_HEADER_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "%"}

Headers = Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """One object an event names: `name` decoded, as the bucket stores it."""

    provider: str  # a key of DEFAULT_TEMPLATES
    bucket: str
    name: str
    content_type: str = ""
    size: int | None = None  # as the event declares it

    def url(self, settings: Settings) -> str:
        """The object's URL: bucket and name percent-encoded into the template."""
        template = settings.object_url_template or DEFAULT_TEMPLATES[self.provider]
        return template.format(bucket=quote(self.bucket, safe=""), name=quote(self.name, safe="/"))

    def looks_like_image(self) -> bool:
        """By content type; by extension when the type is missing or generic; else give it a try."""
        declared = self.content_type.split(";")[0].strip().lower()
        if declared not in UNTYPED:
            return declared.startswith("image/")
        guessed, _ = mimetypes.guess_type(self.name, strict=False)
        return guessed is None or guessed.startswith("image/")


def is_cloud_event(headers: Headers) -> bool:
    """Binary mode sends ce-* headers, structured mode its own media type; JSON calls neither."""
    content_type = headers.get("Content-Type", "").lower()
    return content_type.startswith("application/cloudevents") or any(
        key.lower().startswith("ce-") for key in headers.keys()
    )


def parse_event(headers: Headers, body: bytes) -> CloudEvent:
    """A CloudEvent 1.0 with non-empty id, source and type, or a BadRequest."""
    try:
        event = from_http(headers, body)
    except (GenericException, ValueError, TypeError, RecursionError) as exc:  # the SDK lets decode errors through
        raise BadRequest(
            f"not a valid CloudEvent ({exc}): binary mode needs ce-specversion: 1.0, ce-id, ce-source "
            "and ce-type headers; structured mode a JSON body with those attributes"
        ) from None
    empty = [name for name in ("id", "source", "type") if not (isinstance(event.get(name), str) and event.get(name))]
    if empty:
        raise BadRequest(f"not a valid CloudEvent: {', '.join(empty)} must be non-empty strings")
    return event


def stored_objects(event: CloudEvent) -> list[StoredObject]:
    """The objects an event asks to classify; [] for events acknowledged and skipped."""
    kind = event["type"]
    if kind == GCS_FINALIZED:
        return [_gcs_object(_data(event))]
    if kind in GCS_SKIPPED:
        _skip(event, "not an upload")
        return []
    action = _s3_action(kind)
    if action is None:
        raise UnsupportedEvent(
            f"unsupported event type {kind!r}: send {GCS_FINALIZED} (Eventarc) or "
            f"{S3_TYPE_PREFIX}s3:ObjectCreated:Put and the like (S3 / MinIO notifications); see docs/events.md"
        )
    if action not in S3_UPLOADS:
        _skip(event, "not an upload")
        return []
    objects = []
    for record in _records(_data(event)):
        name = record.get("eventName")
        if isinstance(name, str) and name.removeprefix("s3:") not in S3_UPLOADS:
            _skip(event, f"record {name} is not an upload")
            continue
        objects.append(_s3_object(record))
    return objects


def reply_event(objects: list[StoredObject], outcome: dict) -> CloudEvent:
    """`io.birdclassifier.classified`: one object's result, or a `results` list for several."""
    entries = [{"bucket": o.bucket, "object": o.name, "result": r} for o, r in zip(objects, outcome["results"])]
    attributes = {"type": REPLY_TYPE, "source": REPLY_SOURCE, "datacontenttype": "application/json"}
    if len(entries) == 1:
        attributes["subject"] = objects[0].name
        data = {**entries[0], "model": outcome["model"]}
    else:
        data = {"model": outcome["model"], "results": entries}
    data["timings_ms"] = outcome["timings_ms"]
    return CloudEvent(attributes, data)


def encode(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary mode, ce-* values percent-encoded as the HTTP binding asks (the SDK writes them raw)."""
    headers, body = to_binary(event)
    return {k: _percent_encode(v) if k.startswith("ce-") else v for k, v in headers.items()}, body


class EventHandler:
    """Turns one storage event into one pipeline call and one reply event."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        self.settings = classifier.settings
        # The operator named the bucket's host in the template, so it may be private (an
        # in-cluster MinIO); strangers' URLs in JSON requests keep the classifier's session.
        self.session = classifier.session
        if self.settings.object_url_template:
            self.session = fetch.make_session(dataclasses.replace(self.settings, allow_private_urls=True))

    def handle(self, headers: Headers, body: bytes) -> tuple[dict[str, str], bytes] | None:
        """The reply event's headers and body; None when nothing is to be classified (204)."""
        event = parse_event(headers, body)
        objects = []
        for obj in stored_objects(event):
            if obj.looks_like_image():
                objects.append(obj)
            else:
                _skip(event, f"{obj.bucket}/{obj.name} is not an image ({obj.content_type or 'by its name'})")
        if not objects:
            return None
        auth = bucket_auth(self.settings)
        transient: list[tuple[StoredObject, ItemError]] = []
        outcome = self.classifier.classify([self._source(o, auth, transient) for o in objects])
        if transient:
            obj, error = transient[0]
            raise StorageUnavailable(
                f"could not read {obj.bucket}/{obj.name} ({error.code}: {error.message}); "
                f"{len(transient)} of {len(objects)} objects failed for now, retry the event"
            )
        return encode(reply_event(objects, outcome))

    def _source(self, obj: StoredObject, auth: Headers, transient: list) -> Source:
        """The object's URL source, checked before fetching; transient failures are noted."""
        url = obj.url(self.settings)
        limit = self.settings.max_image_bytes

        def load() -> bytes:
            if obj.size is not None and obj.size > limit:
                raise TooLarge(f"object is {obj.size} bytes, the limit is {limit}")
            if {".", ".."} & set(obj.name.split("/")):
                # URL clients resolve these (requests even decodes %2E): the fetch, with the
                # bucket's token, would read another object than the one uploaded
                raise InvalidUrl("an object name with a '.' or '..' segment cannot be fetched by URL")
            try:
                return fetch.fetch(self.session, url, self.settings, auth)
            except ItemError as exc:
                if exc.transient:
                    transient.append((obj, exc))
                raise

        return Source(url, load)


def bucket_auth(settings: Settings) -> dict[str, str]:
    """The Authorization header for private buckets; the file (if set) wins and is read on
    every event, so a rotated Secret takes effect without a restart."""
    token = settings.bucket_token
    if settings.bucket_token_file:
        try:
            token = pathlib.Path(settings.bucket_token_file).read_text().strip()
        except OSError as exc:
            raise StorageUnavailable(f"cannot read CLASSIFIER_BUCKET_TOKEN_FILE: {exc.strerror}") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


# --- event data -------------------------------------------------------------------


def _data(event: CloudEvent) -> dict:
    if not isinstance(event.data, dict):
        raise BadRequest(f"{event['type']} event data must be a JSON object")
    return event.data


def _field(data: dict, path: str) -> str:
    """A non-empty string at a dotted path of the event data, or a BadRequest naming the path."""
    value: Any = data
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"event data has no {path!r} (a non-empty string)")
    return value


def _size(value: Any) -> int | None:
    """GCS sends a string, S3 a number; anything else is ignored (the download is bounded anyway)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _gcs_object(data: dict) -> StoredObject:
    return StoredObject("gcs", _field(data, "bucket"), _field(data, "name"),
                        _text(data.get("contentType")), _size(data.get("size")))


def _s3_action(kind: str) -> str | None:
    """The action (`ObjectCreated:Put`) of an S3 notification type, else None:
    `com.amazonaws.s3:<action>` (MinIO) or `com.amazonaws.Object<...>` (AWS S3, Ceph)."""
    name = kind.removeprefix(S3_TYPE_PREFIX)
    if name == kind:
        return None
    if name.startswith("s3:"):
        return name.removeprefix("s3:")
    return name if name.startswith("Object") else None


def _records(data: dict) -> list[dict]:
    """A whole notification (`{"Records": [...]}`) or one record, as eventing-ceph sends it."""
    if "Records" not in data:
        return [data]
    records = data["Records"]
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise BadRequest("event data 'Records' must be a non-empty list of objects")
    return records


def _s3_object(record: dict) -> StoredObject:
    bucket = _field(record, "s3.bucket.name")
    key = unquote_plus(_field(record, "s3.object.key"))  # S3 and MinIO form-encode keys
    obj = record["s3"]["object"]  # a dict: _field found the key in it
    return StoredObject("s3", bucket, key, _text(obj.get("contentType")), _size(obj.get("size")))


def _skip(event: CloudEvent, reason: str) -> None:
    logger.info("skipped %s event %s: %s", event["type"], event["id"], reason,
                extra={"fields": {"event": "skipped", "type": event["type"], "id": event["id"], "reason": reason}})


# --- encoding ---------------------------------------------------------------------


def _percent_encode(value: str) -> str:
    return "".join(c if c in _HEADER_SAFE else quote(c, safe="") for c in value)
