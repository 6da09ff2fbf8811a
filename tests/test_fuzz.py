"""Property tests of every front door: whatever arrives (JSON, bytes, query strings,
CloudEvents), the answer is a success or a 4xx with the error shape, never a 5xx.

The requests go through the real target and pipeline. Valid-looking URLs would be
fetched, so the guard's resolution is replaced by one that refuses every host: no
example reaches the network, each such URL fails alone as `forbidden_url`. (That is
also why no 5xx is allowed for events: a well-formed event whose fetch fails for now
answers 502 for the broker to retry, and a refusal is never "for now".)
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from conftest import function_client
from function import guard
from function.errors import ForbiddenUrl

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def refuse_every_host(host, port, allow_private, resolver=guard.system_resolver):
    raise ForbiddenUrl(f"fuzzing: {host!r} is not fetched")


@pytest.fixture(scope="module")
def client(stand_in):
    with pytest.MonkeyPatch.context() as patch:
        for key, value in stand_in.env(CLASSIFIER_ALLOW_PRIVATE_URLS="0").items():
            patch.setenv(key, value)
        patch.setattr(guard, "resolve", refuse_every_host)
        yield function_client()


def assert_answered(response, method: str = "POST") -> None:
    """200-299 or 4xx; a 4xx carries {"error": {"code", "message"}} (HEAD: no body at all)."""
    event(f"status {response.status_code}")  # --hypothesis-show-statistics: what the examples reached
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400 and method != "HEAD":
        body = response.get_json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
url_strings = urls() | st.text(max_size=60) | st.sampled_from(
    ["http://127.0.0.1/x.png", "http://2130706433/", "file:///etc/passwd", "http://user:pw@h/x", "http://[::1/",
     "https://example.com:99999/x", "http://" + "a" * 3000])
requests_ = st.fixed_dictionaries(
    {"urls": st.lists(url_strings, max_size=40) | json_values},
    optional={"top_k": st.integers(-3, 30) | json_values, "model": st.sampled_from(["birds", ""]) | json_values},
)
content_types = st.sampled_from([
    "application/json", "application/json; charset=latin-1", "text/plain", "", "application/cloudevents+json",
    "multipart/form-data; boundary=xyz", "multipart/form-data", "image/png", "application/x-www-form-urlencoded",
])


@FUZZ
@given(payload=json_values | requests_)
def test_any_json_body(client, payload):
    response = client.post("/", data=json.dumps(payload), content_type="application/json")
    assert_answered(response)
    if response.status_code == 200:
        results = response.get_json()["results"]
        assert len(results) == len(payload["urls"])
        assert all("predictions" in r or set(r["error"]) == {"code", "message"} for r in results)


@FUZZ
@given(body=st.binary(max_size=3000), content_type=content_types,
       method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE", "GET", "HEAD", "OPTIONS"]),
       path=st.sampled_from(["/", "/healthz", "/models", "/openapi.json", "/nope", "//", "/%00"]))
def test_any_bytes_any_method(client, body, content_type, method, path):
    response = client.open(path, method=method, data=body, headers={"Content-Type": content_type})
    assert_answered(response, method)


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(["url", "top_k", "model", "name"]) | st.text(max_size=8),
                                url_strings | st.text(max_size=20)), max_size=12),
       raw=st.text(max_size=80))
def test_any_query_string(client, pairs, raw):
    assert_answered(client.get("/?" + urlencode(pairs)), "GET")
    assert_answered(client.get("/?" + quote(raw, safe="=&%+")), "GET")


# --- CloudEvents ------------------------------------------------------------------------


well_formed_gcs = st.fixed_dictionaries({  # reaches the fetch (refused) and the reply event
    "bucket": st.text(min_size=1, max_size=12), "name": st.text(min_size=1, max_size=30),
    "contentType": st.sampled_from(["image/jpeg", "image/png"]),
})
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
EVENT_TYPES = st.sampled_from([
    "google.cloud.storage.object.v1.finalized", "google.cloud.storage.object.v1.deleted",
    "com.amazonaws.s3:ObjectCreated:Put", "com.amazonaws.ObjectCreated:Copy", "com.amazonaws.s3:ObjectRemoved:Delete",
]) | header_text
storage_data = st.fixed_dictionaries(
    {},
    optional={"bucket": st.text(max_size=12) | json_values, "name": st.text(max_size=30) | json_values,
              "contentType": st.sampled_from(["image/jpeg", "text/plain", ""]) | json_values,
              "size": st.integers(-1, 10**12) | st.text(max_size=8),
              "Records": st.lists(json_values, max_size=3) | json_values,
              "s3": json_values},
)


@FUZZ
@given(spec=st.sampled_from(["1.0", "0.3"]) | header_text, id_=header_text, source=header_text, type_=EVENT_TYPES,
       content_type=content_types,
       body=st.binary(max_size=500) | (storage_data | well_formed_gcs).map(lambda d: json.dumps(d).encode()))
def test_any_binary_mode_event(client, spec, id_, source, type_, content_type, body):
    headers = {"ce-specversion": spec, "ce-id": id_, "ce-source": source, "ce-type": type_,
               "Content-Type": content_type}
    assert_answered(client.post("/", data=body, headers=headers))


structured_events = st.fixed_dictionaries(
    {"specversion": st.just("1.0"), "id": st.text(min_size=1, max_size=8), "source": st.text(min_size=1, max_size=8),
     "type": EVENT_TYPES},
    optional={"datacontenttype": st.sampled_from(["application/json", "text/plain"]),
              "data": well_formed_gcs | storage_data | json_values},
)
finalized_events = st.fixed_dictionaries({  # well-formed uploads: fetched (refused), answered by a reply event
    "specversion": st.just("1.0"), "id": st.text(min_size=1, max_size=8), "source": st.text(min_size=1, max_size=8),
    "type": st.just("google.cloud.storage.object.v1.finalized"), "data": well_formed_gcs,
})
loose_events = st.dictionaries(
    st.sampled_from(["specversion", "id", "source", "type", "datacontenttype", "data", "data_base64", "time"]),
    json_values, max_size=8,
)


@FUZZ
@given(event=finalized_events | structured_events | loose_events | json_values, raw=st.binary(max_size=300))
def test_any_structured_mode_event(client, event, raw):
    headers = {"Content-Type": "application/cloudevents+json"}
    assert_answered(client.post("/", data=json.dumps(event), headers=headers))
    assert_answered(client.post("/", data=raw, headers=headers))
