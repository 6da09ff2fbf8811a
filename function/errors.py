"""The error tree: one base, a subclass per failure family, each with a stable code.

Request-level errors carry the HTTP status of the whole answer; item errors fail one
image and travel inside `results`. `transient` tells retrying callers (a Knative
Broker) whether trying the same thing again can help.
"""

from __future__ import annotations


class ClassifierError(Exception):
    """Base of every error this package raises on purpose."""

    code = "internal"
    status = 500
    transient = False

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


# --- request-level: the whole answer is an error --------------------------------


class BadRequest(ClassifierError, ValueError):
    """The request cannot be understood (400)."""

    code = "bad_request"
    status = 400


class TooManyUrls(BadRequest):
    """More images in one request than `CLASSIFIER_MAX_URLS` allows (400)."""

    code = "too_many_urls"


class RequestTooLarge(BadRequest):
    """The body is over `CLASSIFIER_MAX_REQUEST_BYTES` (uploads: `CLASSIFIER_MAX_UPLOAD_BYTES`) (413)."""

    code = "request_too_large"
    status = 413


class RequestTimeout(BadRequest):
    """The request body did not arrive within `CLASSIFIER_REQUEST_READ_DEADLINE`, or the
    client went away while sending it (408, and the connection is closed)."""

    code = "request_timeout"
    status = 408


class RequestLineTooLong(BadRequest):
    """The request line (a GET's query string) is over the server's limit: POST the URLs
    as JSON instead (414, answered by the server before the function runs)."""

    code = "request_line_too_long"
    status = 414


class HeadersTooLarge(BadRequest):
    """Too many request headers, or one too long (431, answered by the server)."""

    code = "headers_too_large"
    status = 431


class UnknownModel(BadRequest):
    """The request names a model that is not configured (400; GET /models lists them)."""

    code = "unknown_model"


class UnsupportedEvent(BadRequest):
    """A CloudEvent of a type this function does not handle (400; docs/events.md lists them)."""

    code = "unsupported_event"


class Unauthenticated(ClassifierError):
    """A CloudEvent without a valid sender token while CLASSIFIER_EVENT_AUDIENCE is set (401)."""

    code = "unauthenticated"
    status = 401


class AuthUnavailable(ClassifierError):
    """The keys that check event senders' tokens (CLASSIFIER_EVENT_JWKS_URL) cannot be read
    for now: 503, so the sender retries instead of dropping a genuine event."""

    code = "auth_unavailable"
    status = 503
    transient = True


class NotFound(ClassifierError):
    """No such path (404)."""

    code = "not_found"
    status = 404


class MethodNotAllowed(ClassifierError):
    """The path exists, the method does not (405)."""

    code = "method_not_allowed"
    status = 405


class ModelUnavailable(ClassifierError):
    """Model or labels could not be loaded; retry after `retry_after` seconds (503)."""

    code = "model_unavailable"
    status = 503
    transient = True

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class BadModel(ModelUnavailable):
    """The model loaded but its signature is not the one we can call (503)."""

    code = "bad_model"


class StorageUnavailable(ClassifierError):
    """An event's object could not be read for now (bucket 5xx/429, timeout, no connection,
    unreadable token file): 502, so the Broker retries the event."""

    code = "storage_unavailable"
    status = 502
    transient = True


# --- item-level: one image failed, the others go on -----------------------------


class ItemError(ClassifierError):
    """One image could not be classified; reported in its slot of `results`."""

    code = "item_failed"


class InvalidUrl(ItemError, ValueError):
    code = "invalid_url"


class UrlTooLong(InvalidUrl):
    code = "url_too_long"


class ForbiddenUrl(ItemError):
    """Scheme, credentials or address refused by the fetch guard."""

    code = "forbidden_url"


class FetchFailed(ItemError):
    """Could not connect, or the connection broke mid-body."""

    code = "fetch_failed"
    transient = True


class HttpStatus(ItemError):
    """The image server answered with a non-2xx status."""

    code = "http_status"

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code
        self.transient = status_code >= 500 or status_code == 429


class FetchTimeout(ItemError):
    """Connect, read or the whole download took longer than allowed."""

    code = "timeout"
    transient = True


class TooLarge(ItemError):
    """The download is bigger than `CLASSIFIER_MAX_IMAGE_BYTES`."""

    code = "too_large"


class NotAnImage(ItemError):
    """The bytes are not an image Pillow can decode."""

    code = "not_an_image"


class UnsupportedFormat(ItemError):
    """An image, but of a format not in `CLASSIFIER_ALLOWED_FORMATS`."""

    code = "unsupported_format"


class ImageTooLarge(ItemError):
    """More pixels than `CLASSIFIER_MAX_IMAGE_PIXELS` (decompression bombs)."""

    code = "image_too_large"


class FileUnreadable(ItemError):
    """A local path that cannot be read."""

    code = "file_unreadable"


class TooManyRedirects(ItemError):
    """The URL redirected more often than `CLASSIFIER_MAX_REDIRECTS`."""

    code = "too_many_redirects"


class Overloaded(ItemError):
    """The download could not get its bytes from `CLASSIFIER_MAX_INFLIGHT_BYTES` within its
    deadline: too many downloads at once. Trying again later can help."""

    code = "overloaded"
    transient = True
