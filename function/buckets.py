"""Where storage events' objects live: bucket-name rules, object URLs, and the one
session allowed to fetch them, pinned to the object URL template's host.

An event names a bucket and an object; both end up in a URL that is fetched with the
bucket's credentials. So the bucket must be a name the provider could have created (no
`..`, no `/`, nothing that leaves the template's host or path prefix), and the session
refuses every URL, redirects included, that is not on the template's scheme, host and port.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import quote, urlsplit

from . import fetch, guard
from .config import Settings
from .errors import BadRequest, ForbiddenUrl
from .redaction import redact

DEFAULT_TEMPLATES = {
    "gcs": "https://storage.googleapis.com/{bucket}/{name}",
    "s3": "https://{bucket}.s3.amazonaws.com/{name}",
}
URI_SCHEMES = {"gcs": "gs", "s3": "s3"}  # how each provider's own tools name an object

# Characters of one dot-separated label (GCS also allows `_`; S3, MinIO and Ceph do not).
_LABEL = {"gcs": re.compile(r"[a-z0-9_-]+"), "s3": re.compile(r"[a-z0-9-]+")}
_DOTTED_QUAD = re.compile(r"\d+\.\d+\.\d+\.\d+")
_MAX_LABEL = 63
# GCS allows up to 222 characters when the name has dots (a domain name), S3 63 always.
_MAX_DOTTED = {"gcs": 222, "s3": 63}
# What a bucket may look like in a host name: the names check_bucket lets through.
_BUCKET_IN_HOST = "[a-z0-9._-]+"


def check_bucket(provider: str, bucket: str, field: str) -> None:
    """BadRequest naming the event's `field` unless `bucket` follows the provider's naming rules."""
    problem = _bucket_problem(provider, bucket)
    if problem:
        raise BadRequest(f"event data {field!r} is not a valid bucket name ({bucket!r}): {problem}")


def _bucket_problem(provider: str, bucket: str) -> str | None:
    labels = bucket.split(".")
    allowed = "lowercase letters, digits, '-', '_' and '.'" if provider == "gcs" else \
        "lowercase letters, digits, '-' and '.'"
    if not all(_LABEL[provider].fullmatch(label) for label in labels if label):
        return f"use only {allowed}"
    longest = _MAX_DOTTED[provider] if len(labels) > 1 else _MAX_LABEL
    if not 3 <= len(bucket) <= longest:
        return f"3 to {longest} characters"
    if not all(labels):
        return "no empty labels (a leading, trailing or doubled '.')"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return "start and end with a letter or digit"
    if any(len(label) > _MAX_LABEL for label in labels):
        return f"at most {_MAX_LABEL} characters between dots"
    if _DOTTED_QUAD.fullmatch(bucket):
        return "not an IP address"
    return None


def template(settings: Settings, provider: str) -> str:
    return settings.object_url_template or DEFAULT_TEMPLATES[provider]


def object_url(settings: Settings, provider: str, bucket: str, name: str) -> str:
    """Where the object is fetched: bucket and name percent-encoded into the template."""
    return template(settings, provider).format(bucket=quote(bucket, safe=""), name=quote(name, safe="/"))


def object_uri(provider: str, bucket: str, name: str) -> str:
    """`gs://BUCKET/NAME` or `s3://BUCKET/KEY`: what results and logs call the object,
    never the fetch URL (a template's query may hold a signature)."""
    return f"{URI_SCHEMES[provider]}://{bucket}/{name}"


# --- the object session ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Origin:
    """A template's scheme, host (with `{bucket}` as a bucket-shaped wildcard) and port."""

    scheme: str
    host: re.Pattern[str]
    port: int

    @classmethod
    def of(cls, url_template: str) -> "Origin":
        parts = urlsplit(url_template)
        pieces = (parts.hostname or "").split("{bucket}")
        host = re.compile(_BUCKET_IN_HOST.join(re.escape(piece) for piece in pieces))
        return cls(parts.scheme.lower(), host, parts.port or _default_port(parts.scheme))

    def admits(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port or _default_port(parts.scheme)
        except ValueError:
            return False
        return (parts.scheme.lower() == self.scheme and port == self.port
                and self.host.fullmatch(parts.hostname or "") is not None)


def _default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


def object_session(settings: Settings, resolver: guard.Resolver = guard.system_resolver) -> fetch.Session:
    """The session storage events fetch with: the template's origin only, the first
    request and every redirect hop alike (fetch.fetch sends each hop itself). A template
    the operator set names their own host, which may be private (an in-cluster MinIO); no
    other private address is reachable, since no other host is."""
    templates = [settings.object_url_template] if settings.object_url_template else list(DEFAULT_TEMPLATES.values())
    origins = [Origin.of(t) for t in templates]

    def admit(url: str) -> None:
        if not any(origin.admits(url) for origin in origins):
            raise ForbiddenUrl(f"{redact(url)} is not on the host of the object URL template: "
                               "storage objects are read from there only")

    allow_private = bool(settings.object_url_template) or settings.allow_private_urls
    return fetch.make_session(settings, resolver, allow_private=allow_private, admit=admit)
