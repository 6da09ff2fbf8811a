"""Settings, read once from the environment: the one place configuration lives."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .redaction import scrub

from .errors import UnknownModel

T = TypeVar("T")

DEFAULT_MODEL_URL = "https://tfhub.dev/google/aiy/vision/classifier/birds_V1/1"
DEFAULT_LABELS_URL = (
    "https://www.gstatic.com/aihub/tfhub/labelmaps/aiy_birds_V1_labelmap.csv"
)
DEFAULT_MODEL_NAME = "birds"
RUNTIMES = ("litert", "tensorflow")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the key and value."""


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _non_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive(cast: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = cast(raw)
        if value <= 0:  # type: ignore[operator]
            raise ValueError("must be greater than zero")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _names(raw: str) -> frozenset[str]:
    return frozenset(part.strip().upper() for part in raw.split(",") if part.strip())


def _words(raw: str) -> frozenset[str]:
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _http_url(raw: str) -> str:
    url = raw.strip()
    if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
        raise ValueError("must be an http(s) URL")
    return url


def _file(raw: str) -> str:
    path = raw.strip()
    if not os.path.isfile(path):
        raise ValueError("no such file")
    return path


def _object_url_template(raw: str) -> str:
    """The object session reaches only this URL's scheme, host and port, so the host part
    may hold {bucket} (virtual-hosted S3) but never {name}, a port or credentials."""
    template = raw.strip()
    try:
        filled = template.format(bucket="b", name="n")
    except (KeyError, IndexError, ValueError):
        raise ValueError("use only the placeholders {bucket} and {name}") from None
    if "{name}" not in template or not filled.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL with a {name} placeholder")
    netloc = urlsplit(template).netloc
    if "{name}" in netloc:
        raise ValueError("{name} belongs in the path, not in the host")
    if "@" in netloc:
        raise ValueError("no credentials in the URL: see docs/events.md for bucket credentials")
    try:
        urlsplit(filled).port
    except ValueError:
        raise ValueError("the port must be a number") from None
    return template


# CLASSIFIER_MODELS entries: name -> {"url", "labels", "input_size", "input_range", "output"}
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MODEL_FIELDS = ("url", "labels", "input_size", "input_range", "output")
INPUT_RANGES = {(0, 1): 1.0, (0, 255): 255.0}
OUTPUTS = ("probabilities", "logits")


def _models(raw: str) -> tuple[ModelSpec, ...]:
    """The registry: inline JSON (it starts with `{`) or the path of a JSON file."""
    text = raw.strip()
    if not text.startswith(("{", "[")):
        try:
            with open(text, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ValueError(f"cannot read the registry file: {exc.strerror or exc}") from None
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(entries, dict) or not entries:
        raise ValueError('must be a JSON object like {"name": {"url": "...", "labels": "..."}}')
    return tuple(_model_spec(name, entry) for name, entry in entries.items())


def _model_spec(name: str, entry: Any) -> ModelSpec:
    try:
        if not MODEL_NAME.match(name):
            raise ValueError("names are 1-64 of a-z, 0-9, _ and -, starting with a letter or digit")
        if name == DEFAULT_MODEL_NAME:
            raise ValueError("is the default model: set CLASSIFIER_MODEL_URL and CLASSIFIER_LABELS_URL instead")
        if not isinstance(entry, dict):
            raise ValueError("must be an object with 'url' and 'labels'")
        unknown = sorted(set(entry) - set(MODEL_FIELDS))
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} (fields: {', '.join(MODEL_FIELDS)})")
        for field in ("url", "labels"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise ValueError(f"{field!r} must be a URL or path")
        return ModelSpec(
            name=name,
            url=entry["url"].strip(),
            labels_url=entry["labels"].strip(),
            input_size=_input_size(entry.get("input_size", 224)),
            input_scale=_input_scale(entry.get("input_range", [0, 1])),
            output=_output(entry.get("output", "probabilities")),
        )
    except ValueError as exc:
        raise ValueError(f"model {name!r}: {exc}") from None


def _input_size(value: Any) -> tuple[int, int]:
    """224 (square) or [width, height]."""
    size = [value, value] if isinstance(value, int) else value
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):
        raise ValueError(f"'input_size' must be a positive integer or [width, height], got {value!r}")
    return size[0], size[1]


def _input_scale(value: Any) -> float:
    key = tuple(value) if isinstance(value, list) and all(type(n) in (int, float) for n in value) else None
    if key not in INPUT_RANGES:
        raise ValueError(f"'input_range' must be [0, 1] or [0, 255], got {value!r}")
    return INPUT_RANGES[key]


def _output(value: Any) -> str:
    if value not in OUTPUTS:
        raise ValueError(f"'output' must be one of {', '.join(OUTPUTS)}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the function; built by `load_settings` from the environment."""

    model_url: str = DEFAULT_MODEL_URL
    labels_url: str = DEFAULT_LABELS_URL
    runtime: str = "litert"
    # LiteRT threads per model call; 0: os.cpu_count(), which in a container is the node's
    # CPUs, not its quota, so the image sets it (docs/performance.md)
    litert_threads: int = 0
    # tensorflow_hub's own default, so both agree without importing it
    cache_dir: str = os.path.join(tempfile.gettempdir(), "tfhub_modules")
    top_k: int = 3
    max_urls: int = 32
    max_url_length: int = 2048
    fetch_workers: int = 8
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    fetch_deadline: float = 20.0
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    allowed_formats: frozenset[str] = frozenset(
        {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}
    )
    max_request_bytes: int = 1024 * 1024
    max_upload_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 3
    allow_private_urls: bool = False
    object_url_template: str = ""  # "": the provider's default (function/events.py)
    bucket_token: str = dataclasses.field(default="", repr=False)  # a secret: kept out of reprs
    bucket_token_file: str = ""
    # Event senders: when the audience is set, every CloudEvent needs a JWT for it (function/event_auth.py).
    event_audience: str = ""
    event_jwks_url: str = ""
    event_jwks_ca_file: str = ""  # "": the system's CAs
    event_issuer: str = ""  # "": any issuer the JWKS's keys sign for
    event_senders: frozenset[str] = frozenset()  # allowed `sub` / verified `email` claims; empty: any
    # Storage credentials (function/storage_auth.py); the rest of each chain is read by google-auth and botocore.
    gce_metadata_host: str = ""  # set: GCS tokens come from this metadata server, without detection
    aws_region: str = ""  # "": botocore's configured region, else us-east-1
    models: tuple[ModelSpec, ...] = ()  # CLASSIFIER_MODELS: the registry, beside the default
    model_retry_seconds: float = 5.0
    log_format: str = "text"
    log_level: str = "INFO"
    # None: a share of the container's memory limit (see `inflight_bytes`)
    max_inflight_bytes: int | None = None
    request_read_deadline: float = 30.0
    # The server's, as functions-framework reads them (function/server.py)
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    threads: int | None = None  # None: 4 per CPU core, functions-framework's default
    timeout_seconds: int = 0  # CLOUD_RUN_TIMEOUT_SECONDS: gunicorn's worker timeout, 0 = none
    # Observability (docs/observability.md): read here, used by the libraries that own them.
    google_cloud_project: str = ""  # "": JSON logs carry no Cloud Logging trace fields
    otlp_endpoint: str = ""  # OTLP collector: traces are exported when set (otel extra)
    otlp_traces_endpoint: str = ""  # the same, for traces only
    metrics_dir: str = ""  # prometheus-client's multiprocess directory, for servers with workers

    @property
    def tracing(self) -> bool:
        """Spans are made only when there is a collector to send them to."""
        return bool(self.otlp_endpoint or self.otlp_traces_endpoint)


# env var -> (field, parser); one table so the README's configuration section has one source.
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CLASSIFIER_MODEL_URL": ("model_url", str.strip),
    "CLASSIFIER_LABELS_URL": ("labels_url", str.strip),
    "CLASSIFIER_RUNTIME": ("runtime", _choice(RUNTIMES)),
    "CLASSIFIER_LITERT_THREADS": ("litert_threads", _non_negative),
    "TFHUB_CACHE_DIR": ("cache_dir", str.strip),
    "CLASSIFIER_TOP_K": ("top_k", _positive(int)),
    "CLASSIFIER_MAX_URLS": ("max_urls", _positive(int)),
    "CLASSIFIER_MAX_URL_LENGTH": ("max_url_length", _positive(int)),
    "CLASSIFIER_FETCH_WORKERS": ("fetch_workers", _positive(int)),
    "CLASSIFIER_CONNECT_TIMEOUT": ("connect_timeout", _positive(float)),
    "CLASSIFIER_READ_TIMEOUT": ("read_timeout", _positive(float)),
    "CLASSIFIER_FETCH_DEADLINE": ("fetch_deadline", _positive(float)),
    "CLASSIFIER_MAX_IMAGE_BYTES": ("max_image_bytes", _positive(int)),
    "CLASSIFIER_MAX_IMAGE_PIXELS": ("max_image_pixels", _positive(int)),
    "CLASSIFIER_ALLOWED_FORMATS": ("allowed_formats", _names),
    "CLASSIFIER_MAX_REQUEST_BYTES": ("max_request_bytes", _positive(int)),
    "CLASSIFIER_MAX_UPLOAD_BYTES": ("max_upload_bytes", _positive(int)),
    "CLASSIFIER_MAX_REDIRECTS": ("max_redirects", int),
    "CLASSIFIER_ALLOW_PRIVATE_URLS": ("allow_private_urls", _flag),
    "CLASSIFIER_OBJECT_URL_TEMPLATE": ("object_url_template", _object_url_template),
    "CLASSIFIER_BUCKET_TOKEN": ("bucket_token", str.strip),
    "CLASSIFIER_BUCKET_TOKEN_FILE": ("bucket_token_file", str.strip),
    "CLASSIFIER_EVENT_AUDIENCE": ("event_audience", str.strip),
    "CLASSIFIER_EVENT_JWKS_URL": ("event_jwks_url", _http_url),
    "CLASSIFIER_EVENT_JWKS_CA_FILE": ("event_jwks_ca_file", _file),
    "CLASSIFIER_EVENT_ISSUER": ("event_issuer", str.strip),
    "CLASSIFIER_EVENT_SENDERS": ("event_senders", _words),
    "GCE_METADATA_HOST": ("gce_metadata_host", str.strip),
    "AWS_REGION": ("aws_region", str.strip),
    "CLASSIFIER_MODELS": ("models", _models),
    "CLASSIFIER_MODEL_RETRY_SECONDS": ("model_retry_seconds", _positive(float)),
    "CLASSIFIER_LOG_FORMAT": ("log_format", _choice(LOG_FORMATS)),
    "CLASSIFIER_LOG_LEVEL": ("log_level", _choice(("debug", "info", "warning", "error"))),
    "CLASSIFIER_MAX_INFLIGHT_BYTES": ("max_inflight_bytes", _positive(int)),
    "CLASSIFIER_REQUEST_READ_DEADLINE": ("request_read_deadline", _positive(float)),
    "HOST": ("host", str.strip),
    "PORT": ("port", _positive(int)),
    "WORKERS": ("workers", _positive(int)),
    "THREADS": ("threads", _positive(int)),
    "CLOUD_RUN_TIMEOUT_SECONDS": ("timeout_seconds", _non_negative),
    "GOOGLE_CLOUD_PROJECT": ("google_cloud_project", str.strip),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("otlp_endpoint", str.strip),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("otlp_traces_endpoint", str.strip),
    "PROMETHEUS_MULTIPROC_DIR": ("metrics_dir", str.strip),
}

# Without CLASSIFIER_MAX_INFLIGHT_BYTES: this share of the container's memory limit (split
# between the workers), or the fallback where there is none (a developer's machine). Under
# the hostile load run a budget cost about twice itself in resident memory (the bodies, and
# the allocator's free pages until the burst ends), beside the model and the decode budget.
INFLIGHT_SHARE = 8
INFLIGHT_FALLBACK_BYTES = 256 * 1024 * 1024


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `environ` (default: os.environ); unset keys keep their default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, (field, parse) in ENVIRONMENT.items():
        raw = environ.get(key)
        if raw is None or not raw.strip():
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            # Values can be signed URLs (CLASSIFIER_MODELS, the model's own), and parsers
            # quote them too: every URL in the message is redacted.
            raise ConfigError(scrub(f"{key}={raw!r}: {exc}")) from None
    if "log_level" in values:
        values["log_level"] = values["log_level"].upper()
    _check_event_auth(values)
    return Settings(**values)


def _check_event_auth(values: dict[str, Any]) -> None:
    """Half a sender check would fail open (no audience) or shut (no keys): refuse to start."""
    audience = "CLASSIFIER_EVENT_AUDIENCE"
    if values.get("event_audience") and not values.get("event_jwks_url"):
        raise ConfigError(f"{audience} is set but CLASSIFIER_EVENT_JWKS_URL is not: "
                          "name the JWKS that signs the senders' tokens")
    if not values.get("event_audience"):
        for key in ("CLASSIFIER_EVENT_JWKS_URL", "CLASSIFIER_EVENT_JWKS_CA_FILE", "CLASSIFIER_EVENT_ISSUER",
                    "CLASSIFIER_EVENT_SENDERS"):
            if values.get(ENVIRONMENT[key][0]):
                raise ConfigError(f"{key} is set but {audience} is not: events would be accepted "
                                  "without a token; set the audience the senders' tokens carry")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What we need to know about a model before loading it."""

    name: str
    url: str
    labels_url: str
    input_size: tuple[int, int] = (224, 224)  # width, height
    input_scale: float = 1.0  # pixel values are fed in [0, input_scale]
    output: str = "probabilities"  # or "logits", turned into probabilities by softmax

    def describe(self) -> dict[str, Any]:
        """The spec as CLASSIFIER_MODELS spells it (GET /models)."""
        return {
            "name": self.name,
            "url": self.url,
            "labels": self.labels_url,
            "input_size": list(self.input_size),
            "input_range": [0, int(self.input_scale) if float(self.input_scale).is_integer() else self.input_scale],
            "output": self.output,
        }


def request_threads(settings: Settings) -> int:
    """Requests one worker serves at once: THREADS, or functions-framework's default of 4
    per CPU core."""
    return settings.threads or (os.cpu_count() or 1) * 4


def inflight_bytes(settings: Settings, memory_limit: int | None) -> int:
    """One worker's download budget: CLASSIFIER_MAX_INFLIGHT_BYTES, else an eighth of the
    container's memory limit shared by its workers (the rest is the interpreter, the model,
    decoded pixels and the answers), or 256 MiB without a limit; never less than one image
    may need."""
    if settings.max_inflight_bytes:
        return settings.max_inflight_bytes
    share = memory_limit // INFLIGHT_SHARE // settings.workers if memory_limit else INFLIGHT_FALLBACK_BYTES
    return max(share, settings.max_image_bytes)


def default_model(settings: Settings) -> ModelSpec:
    """The bird model, or whatever CLASSIFIER_MODEL_URL / CLASSIFIER_LABELS_URL name."""
    return ModelSpec(name=DEFAULT_MODEL_NAME, url=settings.model_url, labels_url=settings.labels_url)


def model_specs(settings: Settings) -> tuple[ModelSpec, ...]:
    """Every configured model, the default first."""
    return (default_model(settings), *settings.models)


def choose_model(specs: Sequence[ModelSpec], name: str | None) -> ModelSpec:
    """`name`'s spec (None: the default, listed first), or UnknownModel (400) naming the choices."""
    for spec in specs:
        if spec.name == (name or specs[0].name):
            return spec
    raise UnknownModel(f"no model named {name!r}; configured: {', '.join(s.name for s in specs)}")
