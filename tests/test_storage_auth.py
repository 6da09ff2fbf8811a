"""Private buckets read with real credentials, checked by the loopback bucket itself.

S3 / MinIO: the bucket recomputes each request's SigV4 signature with botocore from the
known secret and refuses unsigned or wrongly signed requests. GCS: the bucket wants the
token that Application Default Credentials hand out, from a service-account key whose
token endpoint verifies the signed assertion, or from a fake metadata server named by
GCE_METADATA_HOST (in a real functions-framework process: google-auth reads that
variable when it is first imported).
"""

from __future__ import annotations

import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cloudevents.conversion import to_binary
from cloudevents.http import from_http
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import function_client
from fixtures import images as test_images
from fixtures.cloud import bearer_check, metadata_server, service_account_file, sigv4_check, token_endpoint
from fixtures.server import LoopbackServer
from function.storage_auth import GCS_READ_SCOPE
from test_events import (
    BLUE, RED, ROBIN, TIT, error_of, gcs_event, post, put_object, reply_of, s3_event, s3_record,
)
from test_server import served

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE//session+token="


@pytest.fixture
def bucket(monkeypatch, use_stand_in):
    """A path-style template on the loopback bucket, as for an in-cluster MinIO."""
    monkeypatch.setenv("CLASSIFIER_OBJECT_URL_TEMPLATE", use_stand_in.server.url("/{bucket}/{name}"))
    return use_stand_in


def aws_environment(monkeypatch, region: str | None = "eu-central-1", secret: str = SECRET_KEY,
                    session_token: str | None = None) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    if session_token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", session_token)
    if region:
        monkeypatch.setenv("AWS_REGION", region)


def label_of(response) -> str:
    return reply_of(response).data["result"]["predictions"][0]["label"]


def code_of(response) -> str:
    return reply_of(response).data["result"]["error"]["code"]


# --- the bucket's check itself --------------------------------------------------------------


def _signed(url: str, secret: str, region: str = "eu-central-1") -> dict[str, str]:
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(ACCESS_KEY, secret), "s3", region).add_auth(request)
    return dict(request.headers.items())


def test_the_bucket_refuses_unsigned_and_wrongly_signed_requests():
    with LoopbackServer() as server:
        url = server.add("/photos/robin.png", b"robin", authorize=sigv4_check(ACCESS_KEY, SECRET_KEY, "eu-central-1"))
        assert requests.get(url, timeout=10).status_code == 403
        assert requests.get(url, headers=_signed(url, "not-the-secret"), timeout=10).status_code == 403
        assert requests.get(url, headers=_signed(url, SECRET_KEY, "us-west-2"), timeout=10).status_code == 403
        signed = _signed(url, SECRET_KEY)
        assert requests.get(url + "?other=1", headers=signed, timeout=10).status_code == 403
        assert requests.get(url, headers=signed, timeout=10).content == b"robin"


# --- S3, MinIO: SigV4 from the AWS credential chain -------------------------------------------


@pytest.mark.parametrize("key, served_at", [
    ("robin.png", "/sigv4/robin.png"),
    ("garden/my+robin+%E2%9C%93.png", "/sigv4/garden/my%20robin%20%E2%9C%93.png"),
    ("odd/%28a%29%21%2A%27%7E.png", "/sigv4/odd/%28a%29%21%2A%27~.png"),
])
def test_private_minio_objects_are_read_with_a_verified_signature(monkeypatch, bucket, key, served_at):
    aws_environment(monkeypatch)
    put_object(bucket, served_at, RED, authorize=sigv4_check(ACCESS_KEY, SECRET_KEY, "eu-central-1"))
    assert label_of(post(function_client(), s3_event(s3_record("sigv4", key)))) == ROBIN
    assert bucket.server.request_headers[served_at]["Authorization"].startswith("AWS4-HMAC-SHA256 ")


def test_temporary_credentials_send_their_session_token(monkeypatch, bucket):
    aws_environment(monkeypatch, session_token=SESSION_TOKEN)
    check = sigv4_check(ACCESS_KEY, SECRET_KEY, "eu-central-1", session_token=SESSION_TOKEN)
    put_object(bucket, "/sigv4-sts/tit.png", BLUE, authorize=check)
    assert label_of(post(function_client(), s3_event(s3_record("sigv4-sts", "tit.png")))) == TIT


@pytest.mark.parametrize("environ, region", [
    ({"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),  # botocore's own setting
    ({"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "ap-south-1"}, "eu-west-3"),
    ({}, "us-east-1"),  # MinIO's default when nothing names one
])
def test_the_signing_region(monkeypatch, bucket, environ, region):
    aws_environment(monkeypatch, region=None)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    put_object(bucket, f"/sigv4-{region}/robin.png", RED, authorize=sigv4_check(ACCESS_KEY, SECRET_KEY, region))
    assert label_of(post(function_client(), s3_event(s3_record(f"sigv4-{region}", "robin.png")))) == ROBIN


def test_a_wrong_secret_is_refused_by_the_bucket(monkeypatch, bucket):
    aws_environment(monkeypatch, secret="not-the-secret")
    put_object(bucket, "/sigv4-wrong/robin.png", RED, authorize=sigv4_check(ACCESS_KEY, SECRET_KEY, "eu-central-1"))
    assert code_of(post(function_client(), s3_event(s3_record("sigv4-wrong", "robin.png")))) == "http_status"


def test_without_aws_credentials_objects_are_read_anonymously(bucket):
    check = sigv4_check(ACCESS_KEY, SECRET_KEY, "us-east-1")
    put_object(bucket, "/anonymous/private.png", RED, authorize=check)
    put_object(bucket, "/anonymous/public.png", BLUE)
    client = function_client()
    assert code_of(post(client, s3_event(s3_record("anonymous", "private.png")))) == "http_status"
    assert label_of(post(client, s3_event(s3_record("anonymous", "public.png")))) == TIT
    assert "Authorization" not in bucket.server.request_headers["/anonymous/public.png"]


def test_a_static_token_wins_over_the_aws_chain(monkeypatch, bucket):
    aws_environment(monkeypatch)
    monkeypatch.setenv("CLASSIFIER_BUCKET_TOKEN", "static-token")
    put_object(bucket, "/static/robin.png", RED, authorize=bearer_check(lambda: "static-token"))
    assert label_of(post(function_client(), s3_event(s3_record("static", "robin.png")))) == ROBIN


def test_signed_requests_never_follow_a_redirect_to_another_host(monkeypatch, bucket):
    aws_environment(monkeypatch)
    with LoopbackServer("127.0.0.2") as other:
        other.add("/robin.png", test_images.encode(test_images.solid(RED)))
        put_object(bucket, "/sigv4-away/robin.png", status=307, headers={"Location": other.url("/robin.png")},
                   authorize=sigv4_check(ACCESS_KEY, SECRET_KEY, "eu-central-1"))
        assert code_of(post(function_client(), s3_event(s3_record("sigv4-away", "robin.png")))) == "forbidden_url"
        assert not other.hits


# --- GCS: Application Default Credentials -------------------------------------------------------


@pytest.fixture
def service_account(monkeypatch, bucket, tmp_path):
    """GOOGLE_APPLICATION_CREDENTIALS names a key whose token endpoint is on loopback."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token_uri = token_endpoint(bucket.server, "/oauth2/token", key, "ya29.from-the-key", GCS_READ_SCOPE)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_file(tmp_path / "sa.json", key, token_uri)))
    return key


def test_gcs_objects_are_read_with_adc_tokens(service_account, bucket):
    put_object(bucket, "/adc/robin.png", RED, authorize=bearer_check(lambda: "ya29.from-the-key"))
    client = function_client()
    issued = bucket.server.hits.get("/oauth2/token", 0)
    for _ in range(2):
        assert label_of(post(client, gcs_event("adc", "robin.png"))) == ROBIN
    assert bucket.server.hits["/oauth2/token"] == issued + 1  # one token, reused while fresh


def test_a_token_that_cannot_be_had_is_a_502_for_the_broker_to_retry(monkeypatch, bucket, tmp_path):
    wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    right_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token_uri = token_endpoint(bucket.server, "/oauth2/refusing", right_key, "ya29.never", GCS_READ_SCOPE)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                       str(service_account_file(tmp_path / "sa.json", wrong_key, token_uri)))
    put_object(bucket, "/adc-refused/robin.png", RED)
    error = error_of(post(function_client(), gcs_event("adc-refused", "robin.png")), 502)
    assert error["code"] == "storage_unavailable" and "GCS token" in error["message"]
    assert "/adc-refused/robin.png" not in bucket.server.hits


def test_without_google_credentials_objects_are_read_anonymously(bucket):
    put_object(bucket, "/no-adc/private.png", RED, authorize=bearer_check(lambda: "ya29.anything"))
    response = post(function_client(), gcs_event("no-adc", "private.png"))
    assert code_of(response) == "http_status"
    assert "Authorization" not in bucket.server.request_headers["/no-adc/private.png"]


@pytest.mark.slow
def test_gcs_tokens_from_the_metadata_server_named_by_gce_metadata_host(stand_in):
    """GCE_METADATA_HOST is read by google-auth on import: a real process started with it."""
    token = {"now": "ya29.metadata-1"}
    put_object(stand_in, "/metadata/robin.png", RED, authorize=bearer_check(lambda: token["now"]))
    with LoopbackServer() as metadata:
        metadata_server(metadata, token["now"], expires_in=60)  # inside google-auth's refresh margin
        env = stand_in.env(CLASSIFIER_OBJECT_URL_TEMPLATE=stand_in.server.url("/{bucket}/{name}"),
                           CLASSIFIER_ALLOW_PRIVATE_URLS="0", GCE_METADATA_HOST=f"127.0.0.1:{metadata.port}")
        with served(env) as (base, _):
            def classify() -> str:
                headers, body = to_binary(gcs_event("metadata", "robin.png"))
                response = requests.post(base + "/", headers=headers, data=body, timeout=60)
                assert response.status_code == 200, response.text
                return from_http(dict(response.headers), response.content).data["result"]["predictions"][0]["label"]

            def token_requests() -> int:
                return sum(n for path, n in metadata.hits.items() if path.endswith("/token"))

            assert classify() == ROBIN
            first = token_requests()
            token["now"] = "ya29.metadata-2"  # the first one was about to expire: it is not used again
            metadata_server(metadata, token["now"], expires_in=3599)
            assert classify() == ROBIN
            assert classify() == ROBIN  # fresh now: reused
            assert first >= 1 and token_requests() == first + 1
