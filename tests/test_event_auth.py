"""Only trusted senders: with CLASSIFIER_EVENT_AUDIENCE set, a storage event needs a valid
OIDC token, checked against a JWKS served from loopback with keys generated here.

Every refusal is a 401 `unauthenticated` with the usual error body, and the bucket is
never asked for the object: a forged event learns nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cloudevents.conversion import to_binary, to_structured
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import function_client
from fixtures.cloud import OidcIssuer, public_pem
from function.config import ConfigError, load_settings
from test_events import RED, ROBIN, capture_logs, error_of, gcs_event, post, put_object, reply_of
from test_server import free_port

AUDIENCE = "bird-classifier"
EVENTARC = "eventarc-trigger@bird-project.iam.gserviceaccount.com"
KNATIVE = "system:serviceaccount:default:oidc-bird-classifier-gcs-finalized"


@pytest.fixture(scope="module")
def issuer() -> OidcIssuer:
    return OidcIssuer()


@pytest.fixture
def secured(monkeypatch, use_stand_in, issuer):
    """The function with sender checks on, and one object in its loopback bucket."""
    server = use_stand_in.server
    monkeypatch.setenv("CLASSIFIER_OBJECT_URL_TEMPLATE", server.url("/{bucket}/{name}"))
    monkeypatch.setenv("CLASSIFIER_EVENT_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("CLASSIFIER_EVENT_JWKS_URL", issuer.serve(server, "/oidc/jwks.json"))
    monkeypatch.setenv("CLASSIFIER_EVENT_ISSUER", issuer.issuer)
    put_object(use_stand_in, "/secured/robin.png", RED)
    return use_stand_in


def send(client, token: str | None, mode=to_binary, scheme: str = "Bearer"):
    headers, body = mode(gcs_event("secured", "robin.png"))
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    return client.post("/", headers=headers, data=body)


def hs256(payload: dict, secret: bytes, kid: str) -> str:
    """A token MACed with `secret`: PyJWT refuses to make one keyed with a public key."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{part(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


# --- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [to_binary, to_structured], ids=["binary", "structured"])
@pytest.mark.parametrize("ec_key", [False, True], ids=["RS256", "ES256"])
def test_a_valid_token_lets_the_event_in(secured, issuer, mode, ec_key):
    reply = reply_of(send(function_client(), issuer.token(AUDIENCE, ec_key=ec_key), mode))
    assert reply.data["result"]["predictions"][0]["label"] == ROBIN


def test_audience_lists_lowercase_scheme_and_a_cached_key_set(secured, issuer):
    client = function_client()
    jwks_fetches = secured.server.hits.get("/oidc/jwks.json", 0)
    reply_of(send(client, issuer.token(AUDIENCE, aud=["https://other.example", AUDIENCE]), scheme="bearer"))
    reply_of(send(client, issuer.token(AUDIENCE)))
    assert secured.server.hits["/oidc/jwks.json"] == jwks_fetches + 1


# --- refused: 401, nothing fetched ------------------------------------------------------------


STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # a key the JWKS does not hold


def _now() -> int:
    return int(time.time())


def _tampered(token: str) -> str:
    header, claims, signature = token.split(".")
    return ".".join([header, claims[:-2] + ("A" if claims[-2] != "A" else "B") + claims[-1], signature])


# case -> the token it sends (None: no Authorization header at all)
FORGED = {
    "no header": lambda issuer: None,
    "empty bearer": lambda issuer: "",
    "not a JWT": lambda issuer: "not-a-jwt",
    "signed by another key, same kid": lambda issuer: issuer.token(AUDIENCE, key=STRANGER),
    "signed by another key, unknown kid": lambda issuer: issuer.token(AUDIENCE, key=STRANGER, kid="rsa-9"),
    "no kid": lambda issuer: jwt.encode(issuer.claims(AUDIENCE), issuer.rsa_key, algorithm="RS256"),
    "alg none": lambda issuer: jwt.encode(issuer.claims(AUDIENCE), None, algorithm="none", headers={"kid": "rsa-1"}),
    "HS256 keyed with the public key": lambda issuer: hs256(issuer.claims(AUDIENCE), public_pem(issuer.rsa_key),
                                                            "rsa-1"),
    "EC key claiming the RSA kid": lambda issuer: issuer.token(AUDIENCE, ec_key=True, kid="rsa-1"),
    "another audience": lambda issuer: issuer.token("https://other-service.example"),
    "no audience": lambda issuer: issuer.token(AUDIENCE, aud=None),
    "another issuer": lambda issuer: issuer.token(AUDIENCE, iss="https://accounts.google.com"),
    "no issuer": lambda issuer: issuer.token(AUDIENCE, iss=None),
    "expired": lambda issuer: issuer.token(AUDIENCE, iat=_now() - 3600, exp=_now() - 60),
    "no expiry": lambda issuer: issuer.token(AUDIENCE, exp=None),
    "issued in the future": lambda issuer: issuer.token(AUDIENCE, iat=_now() + 3600, exp=_now() + 7200),
    "not yet valid": lambda issuer: issuer.token(AUDIENCE, nbf=_now() + 3600),
    "tampered claims": lambda issuer: _tampered(issuer.token(AUDIENCE)),
}


@pytest.mark.parametrize("case", FORGED)
def test_forged_or_wrongly_addressed_tokens_get_401_and_nothing_is_fetched(secured, issuer, case):
    client = function_client()
    fetched = secured.server.hits.get("/secured/robin.png", 0)
    response = send(client, FORGED[case](issuer))
    error = error_of(response, 401)
    assert error["code"] == "unauthenticated" and error["message"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert secured.server.hits.get("/secured/robin.png", 0) == fetched


@pytest.mark.parametrize("scheme", ["Basic", "Token", "Bearer:"])
def test_other_authorization_schemes_are_refused(secured, issuer, scheme):
    response = send(function_client(), issuer.token(AUDIENCE), scheme=scheme)
    assert error_of(response, 401)["code"] == "unauthenticated"


def test_structured_events_without_a_token_are_refused_before_the_body_is_read(secured):
    response = send(function_client(), None, to_structured)
    assert error_of(response, 401)["code"] == "unauthenticated"


def test_the_token_is_never_logged(monkeypatch, caplog, secured, issuer):
    monkeypatch.setenv("CLASSIFIER_LOG_LEVEL", "debug")
    client = function_client()
    logs = capture_logs(monkeypatch, caplog)
    token = issuer.token(AUDIENCE)
    reply_of(send(client, token))
    error_of(send(client, issuer.token(AUDIENCE, iss="https://elsewhere.example")), 401)
    assert logs.records and token.split(".")[2] not in logs.text


# --- senders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("claims, status", [
    ({"sub": KNATIVE}, 200),
    ({"sub": "112233445566778899", "email": EVENTARC, "email_verified": True}, 200),
    ({"sub": "112233445566778899", "email": EVENTARC, "email_verified": False}, 401),
    ({"sub": "112233445566778899", "email": EVENTARC}, 401),
    ({"sub": "system:serviceaccount:default:some-other-pod"}, 401),
    ({"sub": None}, 401),
], ids=["knative-sub", "google-email", "unverified-email", "email-no-verified-claim", "other-sub", "no-sub"])
def test_senders_limit_who_may_send(monkeypatch, secured, issuer, claims, status):
    monkeypatch.setenv("CLASSIFIER_EVENT_SENDERS", f"{KNATIVE}, {EVENTARC}")
    response = send(function_client(), issuer.token(AUDIENCE, **claims))
    if status == 200:
        reply_of(response)
    else:
        assert "CLASSIFIER_EVENT_SENDERS" in error_of(response, 401)["message"]


# --- the key set cannot be read: retry, don't drop ----------------------------------------------


@pytest.mark.parametrize("jwks", ["closed port", "not JSON", "no keys"])
def test_an_unreadable_key_set_is_a_503_and_nothing_is_fetched(monkeypatch, secured, issuer, jwks):
    server = secured.server
    url = {"closed port": f"http://127.0.0.1:{free_port()}/jwks.json",
           "not JSON": server.add("/oidc/broken.json", b"<html>sign in</html>", content_type="text/html"),
           "no keys": server.add("/oidc/empty.json", b'{"keys": []}', content_type="application/json")}[jwks]
    monkeypatch.setenv("CLASSIFIER_EVENT_JWKS_URL", url)
    fetched = server.hits.get("/secured/robin.png", 0)
    error = error_of(send(function_client(), issuer.token(AUDIENCE)), 503)
    assert error["code"] == "auth_unavailable" and "CLASSIFIER_EVENT_JWKS_URL" in error["message"]
    assert server.hits.get("/secured/robin.png", 0) == fetched


# --- other doors are never affected ----------------------------------------------------------------


def test_json_api_uploads_and_health_need_no_token(secured):
    client = function_client()
    url = secured.server.url("/secured/robin.png")
    assert client.get("/healthz").status_code == 200
    assert client.post("/", json={"urls": [url]}).get_json()["results"][0]["predictions"][0]["label"] == ROBIN
    upload = client.post("/?name=robin.png", data=secured.server._server.routes["/secured/robin.png"].body,
                         headers={"Content-Type": "image/png"})
    assert upload.get_json()["results"][0]["predictions"][0]["label"] == ROBIN
    assert client.get("/models").status_code == 200


def test_without_an_audience_events_need_no_token(monkeypatch, secured):
    monkeypatch.delenv("CLASSIFIER_EVENT_AUDIENCE")
    monkeypatch.delenv("CLASSIFIER_EVENT_JWKS_URL")
    monkeypatch.delenv("CLASSIFIER_EVENT_ISSUER")
    reply_of(send(function_client(), None))


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("environ, message", [
    ({"CLASSIFIER_EVENT_AUDIENCE": AUDIENCE}, "CLASSIFIER_EVENT_JWKS_URL is not"),
    ({"CLASSIFIER_EVENT_JWKS_URL": "https://www.googleapis.com/oauth2/v3/certs"}, "CLASSIFIER_EVENT_AUDIENCE is not"),
    ({"CLASSIFIER_EVENT_SENDERS": EVENTARC}, "CLASSIFIER_EVENT_AUDIENCE is not"),
    ({"CLASSIFIER_EVENT_ISSUER": "https://accounts.google.com"}, "CLASSIFIER_EVENT_AUDIENCE is not"),
    ({"CLASSIFIER_EVENT_AUDIENCE": AUDIENCE, "CLASSIFIER_EVENT_JWKS_URL": "file:///etc/jwks.json"}, "http(s) URL"),
    ({"CLASSIFIER_EVENT_AUDIENCE": AUDIENCE, "CLASSIFIER_EVENT_JWKS_URL": "https://k/jwks",
      "CLASSIFIER_EVENT_JWKS_CA_FILE": "/nonexistent/ca.crt"}, "no such file"),
])
def test_half_configured_sender_checks_stop_the_start(environ, message):
    with pytest.raises(ConfigError, match="CLASSIFIER_EVENT_") as raised:
        load_settings(environ)
    assert message in str(raised.value)
