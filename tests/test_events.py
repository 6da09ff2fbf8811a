"""Storage CloudEvents into `classify`, `io.birdclassifier.classified` events out.

Events are built with the cloudevents SDK in the shapes Eventarc (GCS) and MinIO / AWS S3
(through knative-extensions/eventing-ceph's adapter) really send; the "bucket" is the
stand-in loopback server, reached through CLASSIFIER_OBJECT_URL_TEMPLATE.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import unquote

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

from fixtures import images as test_images
from fixtures.server import LoopbackServer
from conftest import function_client
from function.config import ConfigError, load_settings
from function.events import StoredObject
from test_server import free_port, served

RED, BLUE, GREEN = (250, 5, 5), (5, 5, 250), (5, 250, 5)
ROBIN, TIT, WOODPECKER = "Erithacus rubecula", "Cyanistes caeruleus", "Picus viridis"


# --- events as the providers send them ----------------------------------------------


def gcs_event(bucket: str, name: str, content_type: str = "image/png", size: str = "2048",
              type: str = "google.cloud.storage.object.v1.finalized") -> CloudEvent:
    """Eventarc's Cloud Storage event: StorageObjectData, `size` and `generation` as strings."""
    generation = "1714557600123456"
    return CloudEvent({
        "type": type,
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "subject": f"objects/{name}",
        "id": "9876543210123",
        "time": "2024-05-01T10:00:00.123Z",
        "bucket": bucket,
        "datacontenttype": "application/json",
    }, {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{generation}",
        "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket}/o/{name}",
        "name": name,
        "bucket": bucket,
        "generation": generation,
        "metageneration": "1",
        "contentType": content_type,
        "timeCreated": "2024-05-01T10:00:00.123Z",
        "updated": "2024-05-01T10:00:00.123Z",
        "storageClass": "STANDARD",
        "timeStorageClassUpdated": "2024-05-01T10:00:00.123Z",
        "size": size,
        "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==",
        "mediaLink": f"https://storage.googleapis.com/download/storage/v1/b/{bucket}/o/{name}"
                     f"?generation={generation}&alt=media",
        "crc32c": "yZRlqg==",
        "etag": "CKih16GjycICEAE=",
    })


def s3_record(bucket: str, key: str, event_name: str = "s3:ObjectCreated:Put",
              content_type: str | None = "image/png", size=2048) -> dict:
    """One record of a MinIO bucket notification (key form-encoded, size a number)."""
    obj = {"key": key, "size": size, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "17CB3E0D2C0A7F27"}
    if content_type is not None:
        obj.update(contentType=content_type, userMetadata={"content-type": content_type})
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": "2024-05-01T10:00:00.123Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "10.0.0.7"},
        "responseElements": {"x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                             "x-amz-request-id": "17CB3E0D2C0A7F27",
                             "x-minio-origin-endpoint": "http://minio.minio:9000"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": obj},
        "source": {"host": "10.0.0.7", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"},
    }


def s3_event(*records: dict, type: str = "com.amazonaws.s3:ObjectCreated:Put") -> CloudEvent:
    """A whole notification (`Records`) as the CloudEvent's data."""
    return CloudEvent({"type": type, "source": "minio:s3..photos", "id": "17CB3E0D2C0A7F27"},
                      {"Records": list(records)})


def spec_adapter_event(record: dict) -> CloudEvent:
    """The CloudEvents spec's AWS S3 adapter (cloudevents/adapters/aws-s3.md): one record per event."""
    elements = record["responseElements"]
    return CloudEvent({"type": "com.amazonaws.s3." + record["eventName"],
                       "source": f"{record['eventSource']}.{record['awsRegion']}.{record['s3']['bucket']['name']}",
                       "id": f"{elements['x-amz-request-id']}.{elements['x-amz-id-2']}",
                       "subject": record["s3"]["object"]["key"], "time": record["eventTime"],
                       "datacontenttype": "application/json"}, record)


def ceph_adapter_event(record: dict) -> CloudEvent:
    """What eventing-ceph's receive adapter sends per record: type from eventName, data the record."""
    return CloudEvent({"type": "com.amazonaws." + record["eventName"],
                       "source": f"{record['eventSource']}.{record['awsRegion']}.{record['s3']['bucket']['name']}",
                       "subject": record["s3"]["object"]["key"], "id": "17CB3E0D2C0A7F27dd9025ba"}, record)


# --- helpers ------------------------------------------------------------------------


def put_object(stand_in, path: str, colour=RED, body: bytes | None = None, **route) -> str:
    """Serve an object from the stand-in bucket at `path` (as the fetch will request it)."""
    body = test_images.encode(test_images.solid(colour)) if body is None else body
    return stand_in.server.add(path, body, content_type=route.pop("content_type", "image/png"), **route)


def post(client, event: CloudEvent, mode=to_binary):
    headers, body = mode(event)
    return client.post("/", headers=headers, data=body)


def reply_of(response) -> CloudEvent:
    """The reply, checked to be a binary-mode CloudEvent of our type."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["ce-type"] == "io.birdclassifier.classified"
    event = from_http(dict(response.headers), response.get_data())
    assert event["source"] == "/bird-classifier" and event["specversion"] == "1.0" and event["id"]
    return event


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()["error"]


@pytest.fixture
def bucket_env(monkeypatch, stand_in):
    monkeypatch.setenv("CLASSIFIER_OBJECT_URL_TEMPLATE", stand_in.server.url("/{bucket}/{name}"))


@pytest.fixture
def client(bucket_env, app_client):
    return app_client


def capture_logs(monkeypatch, caplog):
    """caplog sees the package's logs: logs.configure (run as the app loads) stops them propagating."""
    monkeypatch.setattr(logging.getLogger("function"), "propagate", True)
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def function_logs(client, monkeypatch, caplog):
    return capture_logs(monkeypatch, caplog)


# --- the real functions-framework process ---------------------------------------------


@pytest.fixture(scope="module")
def event_server(stand_in):
    env = stand_in.env(CLASSIFIER_OBJECT_URL_TEMPLATE=stand_in.server.url("/{bucket}/{name}"))
    with served(env) as (base, _):
        yield base


@pytest.mark.slow
@pytest.mark.parametrize("mode", [to_binary, to_structured], ids=["binary", "structured"])
@pytest.mark.parametrize("provider", ["gcs", "s3"])
def test_upload_events_through_functions_framework(event_server, client, stand_in, provider, mode):
    bucket = f"ff-{provider}-{mode.__name__.replace('_', '-')}"
    if provider == "gcs":
        event, name = gcs_event(bucket, "garden/robin 1.png"), "garden/robin 1.png"
        put_object(stand_in, f"/{bucket}/garden/robin%201.png", RED)
        label = ROBIN
    else:
        event, name = s3_event(s3_record(bucket, "feeder/blue+tit.png")), "feeder/blue tit.png"
        put_object(stand_in, f"/{bucket}/feeder/blue%20tit.png", BLUE)
        label = TIT
    headers, body = mode(event)
    response = requests.post(event_server + "/", headers=headers, data=body, timeout=60)
    assert response.status_code == 200, response.text
    reply = from_http(dict(response.headers), response.content)
    assert reply["type"] == "io.birdclassifier.classified"
    assert reply["source"] == "/bird-classifier"
    assert unquote(reply["subject"]) == name
    assert reply.data["bucket"] == bucket and reply.data["object"] == name
    assert reply.data["model"] == stand_in.model_url
    assert reply.data["result"]["url"] == f"{'gs' if provider == 'gcs' else 's3'}://{bucket}/{name}"
    assert reply.data["result"]["predictions"][0]["label"] == label
    assert "total" in reply.data["timings_ms"]
    in_process = reply_of(post(client, event, mode))  # another process, the same reply id
    assert in_process["id"] == reply["id"] and in_process.data["result"] == reply.data["result"]


# --- providers, keys and shapes (in-process) ------------------------------------------


def test_gcs_reply_holds_the_same_result_object_as_the_json_api(client, stand_in):
    url = put_object(stand_in, "/gcs-same/robin.png", RED)
    reply = reply_of(post(client, gcs_event("gcs-same", "robin.png")))
    json_result = client.post("/", json={"urls": [url]}).get_json()["results"][0]
    assert reply.data["result"] == {**json_result, "url": "gs://gcs-same/robin.png"}  # the object, not the fetch URL
    assert reply["subject"] == "robin.png"
    assert list(reply.data) == ["bucket", "object", "result", "model", "timings_ms"]


@pytest.mark.parametrize("key, served_at, name", [
    ("my+robin+%E2%9C%93.png", "/s3-keys/my%20robin%20%E2%9C%93.png", "my robin ✓.png"),
    ("V%C3%B6gel/Gr%C3%BCnspecht%2B1.png", "/s3-keys/V%C3%B6gel/Gr%C3%BCnspecht%2B1.png", "Vögel/Grünspecht+1.png"),
    ("odd/%3F%23%25.png", "/s3-keys/odd/%3F%23%25.png", "odd/?#%.png"),
])
def test_s3_keys_are_form_decoded_then_url_quoted(client, stand_in, key, served_at, name):
    put_object(stand_in, served_at, GREEN)
    reply = reply_of(post(client, s3_event(s3_record("s3-keys", key))))
    assert stand_in.server.hits[served_at] >= 1
    assert reply.data["object"] == name
    assert unquote(reply["subject"]) == name  # ce-subject is percent-encoded on the wire
    assert reply.data["result"]["predictions"][0]["label"] == WOODPECKER


@pytest.mark.parametrize("key", ["a/../../other-bucket/robin.png", "./robin.png", "a/./robin.png"])
def test_dot_segments_never_reach_another_object(client, stand_in, key):
    put_object(stand_in, "/other-bucket/robin.png", RED)
    put_object(stand_in, "/s3-dots/robin.png", RED)
    put_object(stand_in, "/s3-dots/a/robin.png", RED)
    reply = reply_of(post(client, s3_event(s3_record("s3-dots", key))))
    assert reply.data["result"]["error"]["code"] == "invalid_url"
    assert not {"/other-bucket/robin.png", "/s3-dots/robin.png", "/s3-dots/a/robin.png"} & set(stand_in.server.hits)


def test_unicode_subject_is_percent_encoded_in_the_header(client, stand_in):
    put_object(stand_in, "/gcs-utf8/Rotkehlchen%20%E2%9C%93.png", RED)
    response = post(client, gcs_event("gcs-utf8", "Rotkehlchen ✓.png"))
    assert response.headers["ce-subject"] == "Rotkehlchen%20%E2%9C%93.png"
    assert reply_of(response).data["object"] == "Rotkehlchen ✓.png"


@pytest.mark.parametrize("event_name", ["s3:ObjectCreated:Put", "s3:ObjectCreated:Copy",
                                        "ObjectCreated:CompleteMultipartUpload", "ObjectCreated:Post"])
def test_eventing_ceph_adapter_sends_one_record_per_event(client, stand_in, event_name):
    put_object(stand_in, "/ceph-one/tit.png", BLUE)
    record = s3_record("ceph-one", "tit.png", event_name=event_name, content_type=None, size=None)
    del record["s3"]["object"]["size"]  # the adapter's struct has no contentType; size may be absent
    reply = reply_of(post(client, ceph_adapter_event(record)))
    assert reply.data["result"]["predictions"][0]["label"] == TIT


def test_several_records_are_one_batch_and_one_reply(client, stand_in):
    put_object(stand_in, "/s3-batch/a.png", RED)
    put_object(stand_in, "/s3-batch/b.png", BLUE)
    event = s3_event(s3_record("s3-batch", "a.png"), s3_record("s3-batch", "gone.png", "s3:ObjectRemoved:Delete"),
                     s3_record("s3-batch", "b.png"))
    reply = reply_of(post(client, event))
    assert "subject" not in reply.get_attributes()
    assert [(r["bucket"], r["object"]) for r in reply.data["results"]] == [("s3-batch", "a.png"), ("s3-batch", "b.png")]
    assert [r["result"]["predictions"][0]["label"] for r in reply.data["results"]] == [ROBIN, TIT]
    assert reply.data["model"] == stand_in.model_url and "timings_ms" in reply.data


@pytest.mark.parametrize("event_name", ["ObjectCreated:Put", "ObjectCreated:Post", "ObjectCreated:Copy",
                                        "ObjectCreated:CompleteMultipartUpload", "s3:ObjectCreated:Put"])
def test_cloudevents_spec_s3_adapter_types_are_accepted(client, stand_in, event_name):
    put_object(stand_in, "/spec-s3/tit.png", BLUE)
    reply = reply_of(post(client, spec_adapter_event(s3_record("spec-s3", "tit.png", event_name=event_name))))
    assert reply.data["object"] == "tit.png" and reply.data["result"]["url"] == "s3://spec-s3/tit.png"
    assert reply.data["result"]["predictions"][0]["label"] == TIT


@pytest.mark.parametrize("size", ["2048", 2048, "", "unknown", None])
def test_size_may_be_a_string_a_number_or_missing(client, stand_in, size):
    put_object(stand_in, "/gcs-size/robin.png", RED)
    event = gcs_event("gcs-size", "robin.png", size=size)
    assert reply_of(post(client, event)).data["result"]["predictions"][0]["label"] == ROBIN


def test_declared_size_over_the_limit_fails_without_a_download(monkeypatch, bucket_env, use_stand_in):
    monkeypatch.setenv("CLASSIFIER_MAX_IMAGE_BYTES", "1000")
    client = function_client()
    put_object(use_stand_in, "/gcs-huge/big.png", RED)
    reply = reply_of(post(client, gcs_event("gcs-huge", "big.png", size="5000000000")))
    assert reply.data["result"]["error"]["code"] == "too_large"
    assert "/gcs-huge/big.png" not in use_stand_in.server.hits


# --- acknowledged and skipped -----------------------------------------------------------


@pytest.mark.parametrize("content_type, name", [
    ("text/plain", "notes.txt"),
    ("application/pdf", "field-guide.pdf"),
    ("text/plain", "looks-like.png"),  # the declared type wins over the name
    ("application/octet-stream", "readme.txt"),  # untyped: the extension decides
    ("", "data.csv"),
])
def test_non_image_objects_are_acknowledged_and_skipped(client, stand_in, function_logs, content_type, name):
    response = post(client, gcs_event("gcs-skip", name, content_type=content_type))
    assert response.status_code == 204 and response.get_data() == b""
    assert not [p for p in stand_in.server.hits if p.startswith("/gcs-skip/")]
    assert f"gcs-skip/{name} is not an image" in function_logs.text


def test_untyped_object_with_an_image_name_is_classified(client, stand_in):
    put_object(stand_in, "/gcs-untyped/robin.jpg", RED, content_type="application/octet-stream")
    event = gcs_event("gcs-untyped", "robin.jpg", content_type="application/octet-stream")
    assert reply_of(post(client, event)).data["result"]["predictions"][0]["label"] == ROBIN


@pytest.mark.parametrize("event", [
    gcs_event("gcs-del", "robin.png", type="google.cloud.storage.object.v1.deleted"),
    gcs_event("gcs-del", "robin.png", type="google.cloud.storage.object.v1.metadataUpdated"),
    gcs_event("gcs-del", "robin.png", type="google.cloud.storage.object.v1.archived"),
    s3_event(s3_record("s3-del", "robin.png", "s3:ObjectRemoved:Delete"), type="com.amazonaws.s3:ObjectRemoved:Delete"),
    ceph_adapter_event(s3_record("s3-del", "robin.png", "ObjectRemoved:DeleteMarkerCreated")),
    ceph_adapter_event(s3_record("s3-del", "robin.png", "s3:ObjectAccessed:Get")),
    ceph_adapter_event(s3_record("s3-del", "robin.png", "s3:ObjectCreated:PutTagging")),
    s3_event(s3_record("s3-del", "robin.png", "s3:ObjectRemoved:Delete")),  # an upload type, no upload record
    spec_adapter_event(s3_record("s3-del", "robin.png", "ObjectRemoved:Delete")),
    spec_adapter_event(s3_record("s3-del", "robin.png", "ObjectRestore:Completed")),
], ids=["gcs-deleted", "gcs-metadata", "gcs-archived", "s3-removed", "ceph-removed", "minio-accessed",
        "minio-tagging", "records", "spec-removed", "spec-restore"])
def test_deletions_and_metadata_updates_are_acknowledged_and_skipped(client, stand_in, function_logs, event):
    response = post(client, event)
    assert response.status_code == 204
    assert not [p for p in stand_in.server.hits if p.startswith(("/gcs-del/", "/s3-del/"))]
    assert f"skipped {event['type']} event {event['id']}" in function_logs.text


# --- refused: 4xx with a clear message, never a 500 ----------------------------------------


@pytest.mark.parametrize("type", [
    "google.cloud.pubsub.topic.v1.messagePublished",
    "com.example.bird.spotted",
    "com.amazonaws.sqs.message",
    "google.cloud.storage.object.v1.finalised",
])
def test_unknown_event_type_is_refused(client, type):
    event = CloudEvent({"type": type, "source": "/somewhere"}, {"bucket": "b", "name": "robin.png"})
    error = error_of(post(client, event), 400)
    assert error["code"] == "unsupported_event"
    assert repr(type) in error["message"] and "google.cloud.storage.object.v1.finalized" in error["message"]


BINARY = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/test",
          "ce-type": "google.cloud.storage.object.v1.finalized", "Content-Type": "application/json"}


@pytest.mark.parametrize("headers, body", [
    ({**BINARY, "ce-specversion": "0.9"}, b"{}"),
    ({**BINARY, "ce-specversion": "0.3"}, b"{}"),
    ({"Content-Type": "application/cloudevents+json"},
     b'{"specversion": "0.3", "id": "1", "source": "/t", "type": "google.cloud.storage.object.v1.finalized", '
     b'"data": {"bucket": "abc", "name": "robin.png"}}'),
    ({**BINARY, "ce-specversion": "2.0"}, b"{}"),
    ({k: v for k, v in BINARY.items() if k != "ce-id"}, b"{}"),
    ({k: v for k, v in BINARY.items() if k != "ce-source"}, b"{}"),
    ({k: v for k, v in BINARY.items() if k != "ce-specversion"}, b"{}"),
    ({**BINARY, "ce-id": ""}, b"{}"),
    ({"Content-Type": "application/cloudevents+json"}, b'{"specversion": "1.0", "source": "/t", "type": "x"}'),
    ({"Content-Type": "application/cloudevents+json"}, b'{"specversion": "1.0", "id": 7, "source": "/t", "type": "x"}'),
    ({"Content-Type": "application/cloudevents+json"}, b'{"specversion": 1.0, "id": "1", "source": "/t", "type": "x"}'),
    ({"Content-Type": "application/cloudevents+json"}, b"{not json"),
    ({"Content-Type": "application/cloudevents+json"}, b"\xff\xfe{"),
    ({"Content-Type": "application/cloudevents+json"}, b"[]"),
    ({"Content-Type": "application/cloudevents+json"}, b""),
    ({"Content-Type": "application/cloudevents-batch+json"}, b"[]"),
], ids=["specversion-0.9", "specversion-0.3", "structured-specversion-0.3", "specversion-2.0", "no-id", "no-source", "no-specversion", "empty-id", "structured-no-id",
        "structured-numeric-id", "structured-numeric-specversion", "structured-not-json", "structured-not-utf8",
        "structured-array", "structured-empty", "batch-mode"])
def test_malformed_cloud_events_are_bad_requests(client, headers, body):
    error = error_of(client.post("/", headers=headers, data=body), 400)
    assert error["code"] == "bad_request"
    assert error["message"].startswith("not a valid CloudEvent")


@pytest.mark.parametrize("event, missing", [
    (gcs_event("b", ""), "name"),
    (CloudEvent({"type": "google.cloud.storage.object.v1.finalized", "source": "/t"}, {"name": "a.png"}), "bucket"),
    (CloudEvent({"type": "google.cloud.storage.object.v1.finalized", "source": "/t"}, {"bucket": 5, "name": "a.png"}),
     "bucket"),
    (s3_event({"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"size": 1}}}),
     "s3.object.key"),
    (s3_event({"eventName": "s3:ObjectCreated:Put", "s3": {"object": {"key": "a.png"}}}), "s3.bucket.name"),
    (s3_event({"eventName": "s3:ObjectCreated:Put", "s3": "bucket"}), "s3.bucket.name"),
    (s3_event(), "Records"),
    (CloudEvent({"type": "com.amazonaws.s3:ObjectCreated:Put", "source": "/t"}, {"Records": "a.png"}), "Records"),
    (CloudEvent({"type": "google.cloud.storage.object.v1.finalized", "source": "/t"}, None), "JSON object"),
    (CloudEvent({"type": "com.amazonaws.s3:ObjectCreated:Put", "source": "/t",
                 "datacontenttype": "text/plain"}, "robin.png"), "JSON object"),
])
def test_missing_fields_are_bad_requests_naming_the_field(client, event, missing):
    error = error_of(post(client, event), 400)
    assert error["code"] == "bad_request" and missing in error["message"]


def test_more_records_than_max_urls_is_too_many_urls(monkeypatch, bucket_env, app_client, stand_in):
    records = [s3_record("s3-many", f"{i}.png") for i in range(33)]  # CLASSIFIER_MAX_URLS defaults to 32
    error = error_of(post(app_client, s3_event(*records)), 400)
    assert error["code"] == "too_many_urls"
    assert not [p for p in stand_in.server.hits if p.startswith("/s3-many/")]


def test_event_body_is_bounded_like_json(monkeypatch, bucket_env, use_stand_in):
    monkeypatch.setenv("CLASSIFIER_MAX_REQUEST_BYTES", "2000")
    client = function_client()
    records = [s3_record("s3-big", f"{i}.png") for i in range(3)]
    assert error_of(post(client, s3_event(*records)), 413)["code"] == "request_too_large"


# --- permanent failures reply, transient ones ask for a retry -----------------------------


@pytest.mark.parametrize("route, code", [
    ({"status": 404}, "http_status"),
    ({"status": 403}, "http_status"),
    ({"body": b"this is not a picture"}, "not_an_image"),
])
def test_permanent_failure_replies_with_the_error_result(client, stand_in, route, code):
    body = route.pop("body", b"")
    put_object(stand_in, "/gcs-perm/robin.png", body=body, **route)
    reply = reply_of(post(client, gcs_event("gcs-perm", "robin.png")))
    assert reply.data["result"]["error"]["code"] == code
    assert reply.data["result"]["url"] == "gs://gcs-perm/robin.png"
    assert "predictions" not in reply.data["result"]


@pytest.mark.parametrize("route", [{"status": 503}, {"status": 500}, {"status": 429}, {"fault": "reset"}])
def test_transient_bucket_failure_is_a_5xx_for_the_broker_to_retry(client, stand_in, route):
    put_object(stand_in, "/gcs-transient/robin.png", RED, **route)
    error = error_of(post(client, gcs_event("gcs-transient", "robin.png")), 502)
    assert error["code"] == "storage_unavailable"
    assert "gcs-transient/robin.png" in error["message"]


def test_unreachable_bucket_is_transient(monkeypatch, use_stand_in):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("CLASSIFIER_OBJECT_URL_TEMPLATE", closed + "/{bucket}/{name}")
    error = error_of(post(function_client(), gcs_event("nowhere", "robin.png")), 502)
    assert error["code"] == "storage_unavailable" and "fetch_failed" in error["message"]


def test_model_unavailable_is_a_503(monkeypatch, bucket_env, stand_in):
    for key, value in stand_in.env(CLASSIFIER_MODEL_URL=stand_in.server.url("/models/missing.tar.gz")).items():
        monkeypatch.setenv(key, value)
    client = function_client()
    put_object(stand_in, "/gcs-nomodel/robin.png", RED)
    response = post(client, gcs_event("gcs-nomodel", "robin.png"))
    assert error_of(response, 503)["code"] == "model_unavailable"
    assert response.headers["Retry-After"]


# --- private buckets ------------------------------------------------------------------------

TOKEN = "ya29.private-bucket-token-d9f1"


def test_bearer_token_goes_to_the_bucket_only_and_never_to_the_logs(monkeypatch, caplog, bucket_env, use_stand_in):
    monkeypatch.setenv("CLASSIFIER_BUCKET_TOKEN", TOKEN)
    monkeypatch.setenv("CLASSIFIER_LOG_LEVEL", "debug")
    client = function_client()
    logs = capture_logs(monkeypatch, caplog)
    put_object(use_stand_in, "/private/robin.png", RED)
    put_object(use_stand_in, "/private/404.png", status=404)
    reply = reply_of(post(client, s3_event(s3_record("private", "robin.png"), s3_record("private", "404.png"))))
    assert use_stand_in.server.request_headers["/private/robin.png"]["Authorization"] == f"Bearer {TOKEN}"
    assert reply.data["results"][1]["result"]["error"]["code"] == "http_status"
    stranger = put_object(use_stand_in, "/elsewhere/stranger.png", RED)
    assert client.post("/", json={"urls": [stranger]}).status_code == 200
    assert "Authorization" not in use_stand_in.server.request_headers["/elsewhere/stranger.png"]
    assert logs.records and TOKEN not in logs.text
    assert TOKEN not in repr(load_settings({"CLASSIFIER_BUCKET_TOKEN": TOKEN}))


def test_token_file_is_read_on_every_event(monkeypatch, tmp_path, bucket_env, use_stand_in):
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    monkeypatch.setenv("CLASSIFIER_BUCKET_TOKEN", "env-token")  # the file wins
    monkeypatch.setenv("CLASSIFIER_BUCKET_TOKEN_FILE", str(token_file))
    client = function_client()
    put_object(use_stand_in, "/rotated/robin.png", RED)
    seen = []
    for token in ("first-token", "rotated-token"):
        token_file.write_text(token + "\n")
        reply_of(post(client, gcs_event("rotated", "robin.png")))
        seen.append(use_stand_in.server.request_headers["/rotated/robin.png"]["Authorization"])
    assert seen == ["Bearer first-token", "Bearer rotated-token"]
    token_file.unlink()
    error = error_of(post(client, gcs_event("rotated", "robin.png")), 502)
    assert error["code"] == "storage_unavailable" and "CLASSIFIER_BUCKET_TOKEN_FILE" in error["message"]


def test_token_follows_same_origin_redirects_and_no_other(monkeypatch, bucket_env, use_stand_in):
    monkeypatch.setenv("CLASSIFIER_BUCKET_TOKEN", TOKEN)
    client = function_client()
    server = use_stand_in.server
    put_object(use_stand_in, "/moved/robin.png", RED)
    put_object(use_stand_in, "/redirects/same.png", status=302, headers={"Location": "/redirects/same-target.png"})
    put_object(use_stand_in, "/redirects/same-target.png", BLUE)
    other_origin = f"http://localhost:{server.port}/moved/robin.png"  # another host name, the same server
    put_object(use_stand_in, "/redirects/away.png", status=302, headers={"Location": other_origin})
    reply = reply_of(post(client, s3_event(s3_record("redirects", "same.png"), s3_record("redirects", "away.png"))))
    same, away = (r["result"] for r in reply.data["results"])
    assert same["predictions"][0]["label"] == TIT
    assert away["error"]["code"] == "forbidden_url" and "/moved/robin.png" not in server.hits
    assert server.request_headers["/redirects/same-target.png"]["Authorization"] == f"Bearer {TOKEN}"
    assert server.request_headers["/redirects/away.png"]["Authorization"] == f"Bearer {TOKEN}"


def test_template_host_may_be_private_while_json_urls_may_not(monkeypatch, bucket_env, use_stand_in):
    monkeypatch.setenv("CLASSIFIER_ALLOW_PRIVATE_URLS", "0")  # an in-cluster MinIO, a strict JSON API
    client = function_client()
    url = put_object(use_stand_in, "/in-cluster/robin.png", RED)
    reply = reply_of(post(client, gcs_event("in-cluster", "robin.png")))
    assert reply.data["result"]["predictions"][0]["label"] == ROBIN
    assert client.post("/", json={"urls": [url]}).get_json()["results"][0]["error"]["code"] == "forbidden_url"


# --- a session that cannot be steered -------------------------------------------------------


@pytest.fixture
def elsewhere():
    """Canaries: another loopback address and another port, each serving what an SSRF wants."""
    with LoopbackServer("127.0.0.2") as other_host, LoopbackServer() as other_port:
        for server in (other_host, other_port):
            server.add("/latest/meta-data/", b"ami-id", content_type="text/plain")
        yield other_host, other_port


@pytest.mark.parametrize("target", [
    "http://127.0.0.2:{other_host}/latest/meta-data/",  # another private address
    "http://127.0.0.1:{other_port}/latest/meta-data/",  # the template's host, another port
    "http://localhost:{port}/redirected/robin.png",  # the template's server under another name
    "https://127.0.0.1:{port}/redirected/robin.png",  # another scheme
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata endpoint
])
def test_redirects_off_the_template_host_are_forbidden(monkeypatch, bucket_env, use_stand_in, elsewhere, target):
    monkeypatch.setenv("CLASSIFIER_BUCKET_TOKEN", TOKEN)
    client = function_client()
    other_host, other_port = elsewhere
    server = use_stand_in.server
    put_object(use_stand_in, "/redirected/robin.png", RED)
    location = target.format(port=server.port, other_host=other_host.port, other_port=other_port.port)
    put_object(use_stand_in, "/steer/robin.png", status=302, headers={"Location": location})
    asked = server.hits.get("/steer/robin.png", 0)
    reply = reply_of(post(client, gcs_event("steer", "robin.png")))
    assert reply.data["result"]["error"]["code"] == "forbidden_url"
    assert server.hits["/steer/robin.png"] == asked + 1 and "/redirected/robin.png" not in server.hits
    assert not other_host.hits and not other_port.hits


@pytest.mark.parametrize("event, field", [
    (gcs_event("..", "robin.png"), "bucket"),
    (gcs_event("a..b", "robin.png"), "bucket"),
    (gcs_event("..%2F..%2Fsecret", "robin.png"), "bucket"),
    (gcs_event("other/../bucket", "robin.png"), "bucket"),
    (gcs_event("Photos", "robin.png"), "bucket"),
    (gcs_event("ab", "robin.png"), "bucket"),
    (gcs_event("x" * 64, "robin.png"), "bucket"),
    (gcs_event("127.0.0.1", "robin.png"), "bucket"),
    (s3_event(s3_record("my_photos", "robin.png")), "s3.bucket.name"),
    (s3_event(s3_record(".photos", "robin.png")), "s3.bucket.name"),
    (ceph_adapter_event(s3_record("photos-", "robin.png")), "s3.bucket.name"),
    (spec_adapter_event(s3_record("evil.example:80", "robin.png", event_name="ObjectCreated:Put")),
     "s3.bucket.name"),
], ids=["dotdot", "empty-label", "encoded-slash", "slash", "uppercase", "short", "long", "ip", "s3-underscore",
        "s3-leading-dot", "s3-trailing-dash", "s3-port"])
def test_bucket_names_off_the_providers_rules_are_bad_requests(client, stand_in, event, field):
    before = dict(stand_in.server.hits)
    error = error_of(post(client, event), 400)
    assert error["code"] == "bad_request"
    assert f"event data {field!r} is not a valid bucket name" in error["message"]
    assert stand_in.server.hits == before  # nothing fetched


def test_results_and_logs_name_the_object_never_the_fetch_url(monkeypatch, caplog, use_stand_in):
    secret = "X-Goog-Signature=0badc0ffee"  # a signed template: its query must stay private
    monkeypatch.setenv("CLASSIFIER_OBJECT_URL_TEMPLATE", use_stand_in.server.url("/{bucket}/{name}?" + secret))
    monkeypatch.setenv("CLASSIFIER_LOG_LEVEL", "debug")
    client = function_client()
    logs = capture_logs(monkeypatch, caplog)
    put_object(use_stand_in, "/signed/robin.png", RED)
    put_object(use_stand_in, "/signed/gone.png", status=404)
    response = post(client, s3_event(s3_record("signed", "robin.png"), s3_record("signed", "gone.png")))
    results = [r["result"] for r in reply_of(response).data["results"]]
    assert [r["url"] for r in results] == ["s3://signed/robin.png", "s3://signed/gone.png"]
    assert results[0]["predictions"][0]["label"] == ROBIN and results[1]["error"]["code"] == "http_status"
    ours = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in logs.records if r.name.startswith("function"))
    assert "s3://signed/gone.png" in ours and "s3://signed/robin.png" in ours
    assert "0badc0ffee" not in ours + response.get_data(as_text=True)


# --- at least once in, exactly one answer out --------------------------------------------------


def test_redelivered_events_get_the_same_reply_id(client, stand_in):
    put_object(stand_in, "/again/robin.png", RED)
    event = gcs_event("again", "robin.png")
    first, redelivered = (reply_of(post(client, event, mode))["id"] for mode in (to_binary, to_structured))
    assert first == redelivered
    others = {reply_of(post(client, CloudEvent({**event.get_attributes(), **change}, event.data)))["id"]
              for change in ({"id": "9876543210124"}, {"source": "//storage.googleapis.com/projects/_/buckets/b"})}
    assert len(others | {first}) == 3


def test_gcs_generation_is_logged_with_the_result(client, stand_in, function_logs):
    put_object(stand_in, "/generations/robin.png", RED)
    reply = reply_of(post(client, gcs_event("generations", "robin.png")))
    [record] = [r for r in function_logs.records if getattr(r, "fields", {}).get("event") == "storage_event"]
    assert record.fields["reply_id"] == reply["id"] and record.fields["id"] == "9876543210123"
    [entry] = record.fields["objects"]
    assert entry["object"] == "gs://generations/robin.png" and entry["generation"] == "1714557600123456"
    assert entry["label"] == ROBIN
    assert "gs://generations/robin.png 1714557600123456 Erithacus rubecula" in record.getMessage()


# --- configuration ---------------------------------------------------------------------------


def test_object_url_defaults_per_provider():
    settings = load_settings({})
    assert StoredObject("gcs", "my-bucket", "garden/robin 1.png").url(settings) == \
        "https://storage.googleapis.com/my-bucket/garden/robin%201.png"
    assert StoredObject("s3", "my-bucket", "garden/robin 1.png").url(settings) == \
        "https://my-bucket.s3.amazonaws.com/garden/robin%201.png"
    minio = load_settings({"CLASSIFIER_OBJECT_URL_TEMPLATE": "http://minio.minio:9000/{bucket}/{name}"})
    assert StoredObject("s3", "photos", "a+b?.png").url(minio) == "http://minio.minio:9000/photos/a%2Bb%3F.png"


@pytest.mark.parametrize("template", [
    "https://storage.example/{bucket}/{object}",
    "https://storage.example/{0}",
    "https://storage.example/{name",
    "https://storage.example/{bucket}",
    "gs://{bucket}/{name}",
])
def test_bad_object_url_template_is_a_config_error(template):
    with pytest.raises(ConfigError, match="CLASSIFIER_OBJECT_URL_TEMPLATE"):
        load_settings({"CLASSIFIER_OBJECT_URL_TEMPLATE": template})


def test_json_api_is_unchanged_by_the_event_path(client, stand_in):
    url = put_object(stand_in, "/json-still/robin.png", RED)
    response = client.post("/", data=json.dumps({"urls": [url]}), headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and "ce-type" not in response.headers
    assert response.get_json()["results"][0]["predictions"][0]["label"] == ROBIN
