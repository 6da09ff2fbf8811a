"""The CloudEvents front door: storage-upload events in, `io.birdclassifier.classified` out.

Knative Eventing and Eventarc POST CloudEvents to the same `classify` target as the
JSON API. When CLASSIFIER_EVENT_AUDIENCE is set, the sender's token is checked first
(function/event_auth.py). An object-created event becomes one `Source` per object,
fetched from the URL `CLASSIFIER_OBJECT_URL_TEMPLATE` gives it, through a session that
cannot leave the template's host (function/buckets.py), with the bucket's credentials
(function/storage_auth.py); the shared pipeline classifies them and the HTTP reply is a
CloudEvent the Broker routes onward. A permanent failure travels inside the reply; a
transient one answers 5xx so the Broker retries. docs/events.md lists the accepted types
and the reply format.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote_plus

from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from . import buckets, event_auth, fetch, request_context, storage_auth
from .config import Settings
from .errors import BadRequest, InvalidUrl, ItemError, StorageUnavailable, TooLarge, UnsupportedEvent
from .pipeline import Classifier
from .source import Source

logger = logging.getLogger(__name__)

REPLY_TYPE = "io.birdclassifier.classified"
REPLY_SOURCE = "/bird-classifier"
# Reply ids are UUIDv5s of the incoming event's identity under this namespace (reply_id).
REPLY_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cloudevents.io/" + REPLY_TYPE)
SPECVERSION = "1.0"

GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
GCS_SKIPPED = frozenset({
    "google.cloud.storage.object.v1.deleted",
    "google.cloud.storage.object.v1.archived",
    "google.cloud.storage.object.v1.metadataUpdated",
})
# knative-extensions/eventing-ceph's receive adapter (knative/source-minio.yaml) types an
# S3-style record "com.amazonaws." + its eventName: "s3:ObjectCreated:Put" from MinIO,
# "ObjectCreated:Put" from AWS S3 and Ceph. The CloudEvents spec's own AWS S3 adapter
# (cloudevents/spec, cloudevents/adapters/aws-s3.md) types it "com.amazonaws.s3." + eventName.
S3_TYPE_PREFIX = "com.amazonaws."
S3_SPEC_PREFIX = "s3."  # after S3_TYPE_PREFIX: the CloudEvents spec adapter's form
# New bytes in the bucket. MinIO's other ObjectCreated actions (PutTagging, PutRetention,
# PutLegalHold, DeleteTagging) change metadata only, like every non-ObjectCreated family.
S3_UPLOADS = frozenset({
    "ObjectCreated:Put", "ObjectCreated:Post", "ObjectCreated:Copy", "ObjectCreated:CompleteMultipartUpload",
})

# Content types that say nothing about the bytes: the name's extension decides.
UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})
# What a ce-* header value may hold unencoded (CloudEvents HTTP binding 1.0.2, 3.1.3.2).
_HEADER_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "%"}

Headers = Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """One object an event names: `name` decoded, as the bucket stores it."""

    provider: str  # a key of buckets.DEFAULT_TEMPLATES
    bucket: str  # checked against the provider's naming rules
    name: str
    content_type: str = ""
    size: int | None = None  # as the event declares it
    generation: str = ""  # GCS: which version of the object the event is about (logged)

    def url(self, settings: Settings) -> str:
        """Where the object is fetched: bucket and name percent-encoded into the template."""
        return buckets.object_url(settings, self.provider, self.bucket, self.name)

    @property
    def uri(self) -> str:
        """`gs://BUCKET/NAME` or `s3://BUCKET/KEY`: the object's name in results and logs."""
        return buckets.object_uri(self.provider, self.bucket, self.name)

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
    """A CloudEvent 1.0 with non-empty id, source and type, or a BadRequest (the SDK also
    reads 0.3, whose attributes differ: refused rather than half understood)."""
    try:
        event = from_http(headers, body)
    except (GenericException, ValueError, TypeError, RecursionError) as exc:  # the SDK lets decode errors through
        raise BadRequest(
            f"not a valid CloudEvent ({exc}): binary mode needs ce-specversion: 1.0, ce-id, ce-source "
            "and ce-type headers; structured mode a JSON body with those attributes"
        ) from None
    if event["specversion"] != SPECVERSION:
        raise BadRequest(f"not a valid CloudEvent: specversion must be {SPECVERSION}, got {event['specversion']!r}")
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
            f"unsupported event type {kind!r}: send {GCS_FINALIZED} (Eventarc), "
            f"{S3_TYPE_PREFIX}s3:ObjectCreated:Put and the like (S3 / MinIO notifications) or "
            f"{S3_TYPE_PREFIX}{S3_SPEC_PREFIX}ObjectCreated:Put (CloudEvents' S3 adapter); see docs/events.md"
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


def reply_id(event: CloudEvent) -> str:
    """The same for every delivery of one event: CloudEvents identify an event by source
    and id, and brokers deliver at least once, so consumers can drop duplicate replies."""
    return str(uuid.uuid5(REPLY_ID_NAMESPACE, json.dumps([event["source"], event["id"]])))


def reply_event(event: CloudEvent, objects: list[StoredObject], outcome: dict,
                traceparent: str | None = None) -> CloudEvent:
    """`io.birdclassifier.classified`: one object's result, or a `results` list for several;
    `traceparent` (the distributed tracing extension) ties it to the request's trace."""
    entries = [{"bucket": o.bucket, "object": o.name, "result": r} for o, r in zip(objects, outcome["results"])]
    attributes = {"type": REPLY_TYPE, "source": REPLY_SOURCE, "id": reply_id(event),
                  "datacontenttype": "application/json"}
    if traceparent:
        attributes["traceparent"] = traceparent
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
        self.authenticator = event_auth.authenticator(self.settings)
        # Strangers' URLs in JSON requests keep the classifier's session.
        self.session = buckets.object_session(self.settings)
        self.credentials = storage_auth.BucketCredentials(self.settings)

    def authenticate(self, headers: Headers) -> None:
        """Unauthenticated (401) unless the sender's token checks out; a no-op when no
        audience is configured. Called before the body is read."""
        if self.authenticator is not None:
            self.authenticator.check(headers)

    def handle(self, headers: Headers, body: bytes) -> tuple[dict[str, str], bytes] | None:
        """The reply event's headers and body; None when nothing is to be classified (204)."""
        event = parse_event(headers, body)
        request_context.adopt_event_id(event["id"])
        objects = []
        for obj in stored_objects(event):
            if obj.looks_like_image():
                objects.append(obj)
            else:
                _skip(event, f"{obj.uri} is not an image ({obj.content_type or 'by its name'})")
        if not objects:
            return None
        sign = self.credentials.signer(objects[0].provider)  # one event, one provider
        transient: list[tuple[StoredObject, dict[str, str]]] = []
        outcome = self.classifier.classify([self._source(o, sign, transient) for o in objects])
        if transient:
            obj, error = transient[0]
            raise StorageUnavailable(
                f"could not read {obj.uri} ({error['code']}: {error['message']}); "
                f"{len(transient)} of {len(objects)} objects failed for now, retry the event"
            )
        reply = reply_event(event, objects, outcome, request_context.traceparent())
        _log_results(event, reply, objects, outcome["results"])
        return encode(reply)

    def _source(self, obj: StoredObject, sign: storage_auth.Signer, transient: list) -> Source:
        """The object's source, named by its gs:// or s3:// URI and checked before fetching;
        transient failures are noted."""
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
                return fetch.fetch(self.session, url, self.settings, sign(url))
            except ItemError as exc:
                if exc.transient:  # noted as answered: an exception would keep its frames alive
                    transient.append((obj, exc.to_dict()))
                raise

        return Source(obj.uri, load)


def _log_results(event: CloudEvent, reply: CloudEvent, objects: list[StoredObject], results: list[dict]) -> None:
    """One line per answered event: which objects (and GCS generations) gave what."""
    entries = []
    for obj, result in zip(objects, results):
        entry: dict[str, Any] = {"object": obj.uri}
        if obj.generation:
            entry["generation"] = obj.generation
        if "error" in result:
            entry["error"] = result["error"]["code"]
        else:
            entry["label"], entry["score"] = result["predictions"][0]["label"], result["predictions"][0]["score"]
        entries.append(entry)
    summary = "; ".join(" ".join(str(v) for v in entry.values()) for entry in entries)
    logger.info("event %s from %s: %s", event["id"], event["source"], summary,
                extra={"fields": {"event": "storage_event", "id": event["id"], "source": event["source"],
                                  "type": event["type"], "reply_id": reply["id"], "objects": entries}})


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
    bucket, name = _field(data, "bucket"), _field(data, "name")
    buckets.check_bucket("gcs", bucket, "bucket")
    return StoredObject("gcs", bucket, name, _text(data.get("contentType")), _size(data.get("size")),
                        _generation(data.get("generation")))


def _generation(value: Any) -> str:
    """GCS sends a string of digits; a number is taken too, anything else ignored."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value.isdigit() else ""


def _s3_action(kind: str) -> str | None:
    """The action (`ObjectCreated:Put`) of an S3 notification type, else None:
    `com.amazonaws.s3:<action>` (MinIO), `com.amazonaws.Object<...>` (AWS S3, Ceph), both
    through eventing-ceph, or `com.amazonaws.s3.<eventName>` (the CloudEvents spec's adapter)."""
    name = kind.removeprefix(S3_TYPE_PREFIX)
    if name == kind:
        return None
    if name.startswith(S3_SPEC_PREFIX):
        return name.removeprefix(S3_SPEC_PREFIX).removeprefix("s3:")
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
    buckets.check_bucket("s3", bucket, "s3.bucket.name")
    obj = record["s3"]["object"]  # a dict: _field found the key in it
    return StoredObject("s3", bucket, key, _text(obj.get("contentType")), _size(obj.get("size")))


def _skip(event: CloudEvent, reason: str) -> None:
    logger.info("skipped %s event %s: %s", event["type"], event["id"], reason,
                extra={"fields": {"event": "skipped", "type": event["type"], "id": event["id"], "reason": reason}})


# --- encoding ---------------------------------------------------------------------


def _percent_encode(value: str) -> str:
    return "".join(c if c in _HEADER_SAFE else quote(c, safe="") for c in value)
