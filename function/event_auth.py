"""Who may send storage events: an OIDC token for our audience, checked against a JWKS.

Eventarc pushes Google-signed ID tokens, Knative Eventing's OIDC feature gives Broker
deliveries tokens from the cluster's service-account issuer; both arrive as
`Authorization: Bearer <JWT>`. PyJWT fetches and caches the signing keys and checks
signature, audience, issuer and expiry; the key decides the algorithm, so a token cannot
pick a weaker one (`none`, or HMAC keyed with the public key). PyJWT (with cryptography,
~40 ms) is imported only when the check is on, off the cold-start path otherwise.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

from .config import Settings
from .errors import AuthUnavailable, Unauthenticated

logger = logging.getLogger(__name__)

# Tolerated clock difference between the token's issuer and this pod, in seconds: a token
# is refused from 10 s after its `exp`, and accepted from 10 s before its `iat`/`nbf`.
LEEWAY_SECONDS = 10
JWKS_CACHE_SECONDS = 300  # keys are fetched again after this; an unknown `kid` refetches sooner


class EventAuthenticator:
    """Checks one request's bearer token; built once per process from the settings."""

    def __init__(self, settings: Settings):
        import jwt

        self.audience = settings.event_audience
        self.issuer = settings.event_issuer or None
        self.senders = settings.event_senders
        context = ssl.create_default_context(cafile=settings.event_jwks_ca_file or None)
        self.keys = jwt.PyJWKClient(settings.event_jwks_url, lifespan=JWKS_CACHE_SECONDS,
                                    timeout=settings.read_timeout, ssl_context=context)

    def check(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """The token's claims, or Unauthenticated (401) saying what is wrong with it."""
        import jwt

        token = _bearer_token(headers.get("Authorization", ""), self.audience)
        self._key_set()
        try:
            key = self.keys.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token, key, algorithms=[key.algorithm_name], audience=self.audience, issuer=self.issuer,
                leeway=LEEWAY_SECONDS, options={"require": ["exp"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthUnavailable(f"cannot fetch CLASSIFIER_EVENT_JWKS_URL: {exc}") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not valid: {exc}") from None
        if self.senders and not _is_sender(claims, self.senders):
            who = claims.get("email") or claims.get("sub")
            raise Unauthenticated(f"the token's sender {who!r} is not in CLASSIFIER_EVENT_SENDERS")
        return claims

    def _key_set(self) -> None:
        """Fetched (or served from the cache) before the token is looked at, so that a JWKS
        that cannot be read is told apart from a token that matches none of its keys."""
        import jwt

        try:
            self.keys.get_signing_keys()
        except (jwt.PyJWTError, ValueError) as exc:  # unreachable, not JSON, no signing keys
            raise AuthUnavailable(f"cannot use CLASSIFIER_EVENT_JWKS_URL: {exc}") from None


def authenticator(settings: Settings) -> EventAuthenticator | None:
    """The sender check, or None (with a warning) when CLASSIFIER_EVENT_AUDIENCE is unset."""
    if settings.event_audience:
        return EventAuthenticator(settings)
    logger.warning("CLASSIFIER_EVENT_AUDIENCE is not set: storage events are accepted from anyone "
                   "who can reach this function (fine on your own machine, never in production)")
    return None


def _bearer_token(value: str, audience: str) -> str:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(f"storage events need 'Authorization: Bearer <token>', an OIDC token "
                              f"for the audience {audience!r}")
    return token.strip()


def _is_sender(claims: dict[str, Any], senders: frozenset[str]) -> bool:
    """`sub` (Knative: system:serviceaccount:NS:NAME) or a verified `email` (Google service accounts)."""
    return claims.get("sub") in senders or (claims.get("email") in senders and claims.get("email_verified") is True)
