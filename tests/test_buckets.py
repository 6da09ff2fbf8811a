"""Bucket-name rules, object URLs and URIs, and the session pinned to the template's host."""

from __future__ import annotations

import pytest

from fixtures.server import LoopbackServer
from function import buckets, fetch
from function.config import ConfigError, load_settings
from function.errors import BadRequest, ForbiddenUrl


@pytest.mark.parametrize("provider, bucket", [
    ("gcs", "my-bird-photos"), ("gcs", "my_bird_photos"), ("gcs", "abc"), ("gcs", "a" * 63), ("gcs", "0xdeadbeef"),
    ("gcs", "photos.example.com"), ("gcs", ".".join(["a" * 63] * 3)),  # GCS: dotted names up to 222 characters
    ("s3", "my-bird-photos"), ("s3", "photos.2024"), ("s3", "123"), ("s3", "a" * 63),
])
def test_names_the_providers_allow(provider, bucket):
    buckets.check_bucket(provider, bucket, "bucket")


@pytest.mark.parametrize("provider, bucket, problem", [
    ("gcs", "", "3 to 63"), ("gcs", "ab", "3 to 63"), ("gcs", "a" * 64, "3 to 63"), ("s3", "a.b" * 22, "3 to 63"),
    ("gcs", ".".join(["a" * 63] * 4), "3 to 222"), ("gcs", "a" * 64 + ".b", "at most 63 characters between dots"),
    (".", ".", "3 to"), ("gcs", "..", "3 to"), ("gcs", "...", "no empty labels"), ("s3", "a..b", "no empty labels"),
    ("gcs", ".abc", "no empty labels"), ("s3", "abc.", "no empty labels"),
    ("gcs", "-abc", "start and end"), ("gcs", "abc_", "start and end"), ("s3", "abc-", "start and end"),
    ("gcs", "Photos", "use only"), ("s3", "my_photos", "use only"), ("gcs", "a/b", "use only"),
    ("gcs", "a%2Fb", "use only"), ("s3", "host:80", "use only"), ("gcs", "user@host", "use only"),
    ("gcs", "vögel", "use only"), ("s3", "a b c", "use only"), ("gcs", "abc\n", "use only"),
    ("gcs", "192.168.1.10", "not an IP address"), ("s3", "10.0.0.1", "not an IP address"),
])
def test_names_the_providers_refuse(provider, bucket, problem):
    provider = "gcs" if provider == "." else provider
    with pytest.raises(BadRequest, match="event data 's3.bucket.name' is not a valid bucket name") as raised:
        buckets.check_bucket(provider, bucket, "s3.bucket.name")
    assert problem in raised.value.message


def test_object_uris_are_the_providers_own():
    assert buckets.object_uri("gcs", "photos", "garden/robin 1.png") == "gs://photos/garden/robin 1.png"
    assert buckets.object_uri("s3", "photos", "feeder/tit.jpg") == "s3://photos/feeder/tit.jpg"


@pytest.mark.parametrize("template, url, admitted", [
    ("http://minio.minio:9000/{bucket}/{name}", "http://minio.minio:9000/photos/a.png", True),
    ("http://minio.minio:9000/{bucket}/{name}", "http://MINIO.minio:9000/other/b.png", True),
    ("http://minio.minio:9000/{bucket}/{name}", "http://minio.minio:9001/photos/a.png", False),
    ("http://minio.minio:9000/{bucket}/{name}", "https://minio.minio:9000/photos/a.png", False),
    ("http://minio.minio:9000/{bucket}/{name}", "http://minio.minio/photos/a.png", False),
    ("http://minio.minio:9000/{bucket}/{name}", "http://minio.minio.evil:9000/photos/a.png", False),
    ("https://storage.googleapis.com/{bucket}/{name}", "https://storage.googleapis.com:443/b/o", True),
    ("https://storage.googleapis.com/{bucket}/{name}", "https://storage.googleapis.com.evil.com/b/o", False),
    ("https://storage.googleapis.com/{bucket}/{name}", "http://169.254.169.254/latest/meta-data/", False),
    ("https://{bucket}.s3.amazonaws.com/{name}", "https://photos.s3.amazonaws.com/a.png", True),
    ("https://{bucket}.s3.amazonaws.com/{name}", "https://s3.amazonaws.com/a.png", False),
    ("https://{bucket}.s3.amazonaws.com/{name}", "https://photos.s3.amazonaws.com.evil.com/a.png", False),
    ("https://{bucket}.s3.amazonaws.com/{name}", "https://evil.com/.s3.amazonaws.com/a.png", False),
    ("https://{bucket}.s3.amazonaws.com/{name}", "https://photos.s3-eu-west-1.amazonaws.com/a.png", False),
    ("http://[::1]:9000/{bucket}/{name}", "http://[::1]:9000/photos/a.png", True),
    ("http://[::1]:9000/{bucket}/{name}", "http://[::2]:9000/photos/a.png", False),
    ("http://127.0.0.1:9000/{bucket}/{name}", "http://127.0.0.1:bad/x", False),
])
def test_origin_admits_only_the_templates_scheme_host_and_port(template, url, admitted):
    assert buckets.Origin.of(template).admits(url) is admitted


def test_object_session_refuses_other_hosts_before_connecting():
    with LoopbackServer() as bucket, LoopbackServer("127.0.0.2") as other:
        bucket.add("/photos/a.png", b"bucket")
        other.add("/a.png", b"other")
        settings = load_settings({"CLASSIFIER_OBJECT_URL_TEMPLATE": bucket.url("/{bucket}/{name}")})
        session = buckets.object_session(settings)
        assert fetch.fetch(session, bucket.url("/photos/a.png"), settings) == b"bucket"
        with pytest.raises(ForbiddenUrl, match="not on the host of the object URL template"):
            fetch.fetch(session, other.url("/a.png"), settings)
        assert not other.hits


def test_default_templates_keep_the_guard_for_private_addresses():
    """Without a template the bucket hosts are public ones: a private answer stays refused."""
    settings = load_settings({})
    session = buckets.object_session(settings, resolver=lambda host, port: ["10.0.0.7"])
    with pytest.raises(ForbiddenUrl, match="non-public address"):
        fetch.fetch(session, "https://storage.googleapis.com/photos/a.png", settings)


@pytest.mark.parametrize("template, problem", [
    ("https://{name}.storage.example/{bucket}", "{name} belongs in the path"),
    ("https://user:pw@storage.example/{bucket}/{name}", "no credentials"),
    ("http://minio:{bucket}/{name}", "the port must be a number"),
])
def test_templates_that_would_unpin_the_session_are_config_errors(template, problem):
    with pytest.raises(ConfigError, match="CLASSIFIER_OBJECT_URL_TEMPLATE") as raised:
        load_settings({"CLASSIFIER_OBJECT_URL_TEMPLATE": template})
    assert problem in str(raised.value)
