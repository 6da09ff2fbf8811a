"""Credentials for private buckets: a static token, Google's ADC, or the AWS chain.

Each event's objects are read with headers from one signer: the static token when one
is configured (any provider), else Application Default Credentials for GCS (google-auth)
or SigV4 from the standard AWS credential chain for S3, MinIO and Ceph (botocore). The
signer is only ever given object URLs, which the object session keeps on the template's
host (function/buckets.py), so credentials go there and nowhere else.
"""

from __future__ import annotations

import logging
import pathlib
import threading
from collections.abc import Callable
from typing import Any

from .config import Settings
from .errors import StorageUnavailable
from .redaction import scrub

logger = logging.getLogger(__name__)

Signer = Callable[[str], dict[str, str]]  # object URL -> request headers

# Reading objects is all the function does; a service-account key is asked for no more.
GCS_READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
DEFAULT_AWS_REGION = "us-east-1"  # botocore's and MinIO's default, when nothing names one


def static_token(settings: Settings) -> str:
    """CLASSIFIER_BUCKET_TOKEN_FILE (read on every event, so a rotated Secret needs no
    restart) or CLASSIFIER_BUCKET_TOKEN; "" when neither is set."""
    if settings.bucket_token_file:
        try:
            return pathlib.Path(settings.bucket_token_file).read_text().strip()
        except OSError as exc:
            raise StorageUnavailable(f"cannot read CLASSIFIER_BUCKET_TOKEN_FILE: {exc.strerror}") from None
    return settings.bucket_token


def _anonymous(url: str) -> dict[str, str]:
    return {}


def _brief(exc: Exception) -> str:
    """The first line of a library's error, URLs redacted: token endpoints' error pages
    are long, and URLs may carry secrets."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return scrub((text.strip().splitlines() or [type(exc).__name__])[0])[:300]


class BucketCredentials:
    """One per process: each provider's credentials are looked up once, on its first event
    (google-auth and botocore are imported then, not at start-up), and renewed by the
    libraries' own rules before they expire."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()  # one lookup or refresh at a time
        self._found: dict[str, Any] = {}  # provider -> what _find_* returned (None: anonymous)

    def signer(self, provider: str) -> Signer:
        """Headers for GETs of `provider`'s objects, or StorageUnavailable (502, retried)
        when the credentials cannot be had for now."""
        token = static_token(self.settings)
        if token:
            return lambda url: {"Authorization": f"Bearer {token}"}
        return self._google() if provider == "gcs" else self._aws()

    def _current(self, provider: str, find: Callable[[], Any], renew: Callable[[Any], Any],
                 errors: tuple[type[Exception], ...], what: str) -> Any:
        """`renew(find())`, or None for anonymous reads. `find()` runs once per process (a
        failure is not remembered: the next event tries again); `renew` brings what it found
        up to date. Library `errors` become StorageUnavailable naming `what`."""
        with self._lock:
            try:
                if provider not in self._found:
                    self._found[provider] = find()
                found = self._found[provider]
                return None if found is None else renew(found)
            except errors as exc:
                raise StorageUnavailable(f"cannot get {what}: {_brief(exc)}") from None

    # --- GCS: Application Default Credentials --------------------------------------------

    def _google(self) -> Signer:
        from google.auth.exceptions import GoogleAuthError

        def authorization(found: tuple[Any, Any]) -> dict[str, str]:
            credentials, transport = found
            headers: dict[str, str] = {}
            # Refreshes when the token is missing or close to expiry, then sets Authorization.
            credentials.before_request(transport, "GET", "", headers)
            return headers

        headers = self._current("gcs", self._find_google, authorization, (GoogleAuthError,), "a GCS token")
        return _anonymous if headers is None else lambda url: dict(headers)

    def _find_google(self) -> tuple[Any, Any] | None:
        import google.auth
        import google.auth.transport.requests
        from google.auth import compute_engine
        from google.auth.exceptions import DefaultCredentialsError

        transport = google.auth.transport.requests.Request()
        if self.settings.gce_metadata_host:
            # Named outright: use it, without google-auth's probe of the usual metadata address.
            logger.info("GCS objects are read with tokens from the metadata server at %s",
                        self.settings.gce_metadata_host)
            return compute_engine.Credentials(), transport
        try:
            credentials, _ = google.auth.default(scopes=[GCS_READ_SCOPE], request=transport)
        except DefaultCredentialsError as exc:
            logger.warning("no Google credentials (%s): GCS objects are read anonymously", exc)
            return None
        logger.info("GCS objects are read with Application Default Credentials (%s)", type(credentials).__module__)
        return credentials, transport

    # --- S3, MinIO, Ceph: SigV4 from the AWS credential chain ----------------------------

    def _aws(self) -> Signer:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import BotoCoreError, ClientError

        def frozen(found: tuple[Any, str]) -> tuple[Any, str]:
            credentials, region = found
            return credentials.get_frozen_credentials(), region  # refreshes temporary credentials when due

        current = self._current("s3", self._find_aws, frozen, (BotoCoreError, ClientError), "AWS credentials")
        if current is None:
            return _anonymous
        credentials, region = current

        def sign(url: str) -> dict[str, str]:
            request = AWSRequest(method="GET", url=url)
            S3SigV4Auth(credentials, "s3", region).add_auth(request)
            return dict(request.headers.items())

        return sign

    def _find_aws(self) -> tuple[Any, str] | None:
        import botocore.session

        session = botocore.session.Session()
        credentials = session.get_credentials()
        if credentials is None:
            logger.warning("no AWS credentials in the environment, config files, web identity or instance "
                           "metadata: S3 objects are read anonymously")
            return None
        region = self.settings.aws_region or session.get_config_variable("region") or DEFAULT_AWS_REGION
        logger.info("S3 objects are read with SigV4 (credentials from %s, region %s)", credentials.method, region)
        return credentials, region
