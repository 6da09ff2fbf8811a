"""Download strangers' images: guarded connections, bounded bodies, one overall deadline.

Every failure becomes an `ItemError` here (translated at the boundary), so callers
never see a urllib3 or socket exception.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import budget, guard, watchdog
from .config import Settings
from .errors import (
    FetchFailed,
    FetchTimeout,
    HttpStatus,
    ItemError,
    Overloaded,
    TooLarge,
    TooManyRedirects,
)
from .source import Source

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
USER_AGENT = "bird-classifier/1"


# --- connections that go only where the guard allowed ----------------------------


class _GuardedConnectionMixin:
    """Connects to the address the guard checked, never to a second DNS answer."""

    resolve_checked = None  # set per connection by the pool

    def _new_conn(self) -> socket.socket:
        last_error: Exception | None = None
        for address in self.resolve_checked(self.host, self.port):
            self._dns_host = str(address)  # TLS still verifies and sends SNI for self.host
            deadline = _Deadline.current()
            if deadline is not None and isinstance(self.timeout, (int, float)):
                # many unreachable addresses share the one deadline
                self.timeout = max(0.001, min(self.timeout, deadline.remaining()))
            try:
                sock = super()._new_conn()
            except urllib3.exceptions.NewConnectionError as exc:
                last_error = exc
                continue
            _Deadline.watch_current(sock)  # before TLS: a dripped handshake is cut too
            return sock
        raise last_error  # type: ignore[misc]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedPoolMixin:
    resolve_checked = None  # set by the pool manager

    def _new_conn(self):
        conn = super()._new_conn()
        conn.resolve_checked = self.resolve_checked
        return conn

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)
        if conn.sock is not None:  # a kept-alive connection: new sockets are watched in _new_conn
            _Deadline.watch_current(conn.sock)
        return conn


class _GuardedHTTPPool(_GuardedPoolMixin, HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(_GuardedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class Session(urllib3.PoolManager):
    """The process's pooled client for strangers' URLs: every connection passes
    `guard.resolve` first, and `admit` (when set) may refuse a URL before anything is
    sent. urllib3 itself rather than requests: requests' per-request work (preparing,
    merging settings, hooks, cookies) cost a third of a download's CPU under load, and
    `fetch` does everything else requests would (redirects, timeouts, errors) itself."""

    def __init__(self, resolve_checked: Callable, admit: Callable[[str], None] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
        self.resolve_checked = resolve_checked
        self.admit = admit

    def _new_pool(self, scheme, host, port, request_context=None):
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.resolve_checked = self.resolve_checked
        return pool

    def urlopen(self, method, url, redirect=True, **kw):
        if self.admit is not None:
            self.admit(url)
        return super().urlopen(method, url, redirect=redirect, **kw)


def _resolve_checked(host, port, *, allow_private, resolver):
    return guard.resolve(host, port, allow_private, resolver)


def make_session(settings: Settings, resolver: guard.Resolver = guard.system_resolver, *,
                 allow_private: bool | None = None, admit: Callable[[str], None] | None = None) -> Session:
    """One pooled session per process. Proxies from the environment are never used (a
    proxy would be the address we connect to, unchecked). `allow_private` defaults to the
    settings' `allow_private_urls`; `admit(url)` raises an ItemError for a URL this session
    must not reach."""
    allow = settings.allow_private_urls if allow_private is None else allow_private
    size = settings.fetch_workers * 4
    return Session(
        functools.partial(_resolve_checked, allow_private=allow, resolver=resolver), admit,
        num_pools=size, maxsize=size,
        # what requests sent: compressed bodies are welcome (and inflated within the size limit)
        headers={"User-Agent": USER_AGENT, "Accept": "*/*",
                 "Accept-Encoding": urllib3.util.make_headers(accept_encoding=True)["accept-encoding"]},
    )


# --- one download ------------------------------------------------------------------


class _Deadline:
    """One download's overall time limit, enforced on the sockets it uses.

    Socket timeouts count per read, so a server that sends its headers (or a TLS
    handshake, or a chunk header) a byte at a time would hold a worker for as long as
    it likes. The process's watchdog shuts every socket of the download down when the
    deadline passes, which ends any blocked read at once; the reader then reports a
    timeout. A download that has ended is never cut: its connection may be serving the
    next download by then.
    """

    _local = threading.local()  # the download running on this thread: sockets find it here

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._ended = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._alarm: watchdog.Alarm | None = None

    @classmethod
    def current(cls) -> "_Deadline | None":
        return getattr(cls._local, "deadline", None)

    @classmethod
    def watch_current(cls, sock: socket.socket) -> None:
        deadline = cls.current()
        if deadline is not None:
            deadline.watch(sock)

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._ended:
                return
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def __enter__(self) -> "_Deadline":
        self._local.deadline = self
        self._alarm = watchdog.after(self.seconds, self._expire)
        return self

    def __exit__(self, *exc) -> None:
        self._alarm.cancel()
        with self._lock:
            self._ended = True
        self._local.deadline = None


def _shutdown(sock: socket.socket) -> None:
    try:  # the plain socket's method: SSLSocket.shutdown would drop its state under a reader
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def url_source(session: Session, url: str, settings: Settings) -> Source:
    """`url` as a Source: downloaded by `fetch` when the pipeline loads it."""
    return Source(url, functools.partial(fetch, session, url, settings))


def fetch(session: Session, url: str, settings: Settings, headers: Mapping[str, str] | None = None) -> bytes:
    """The body of `url`, or an ItemError saying why not.

    `headers` (a bucket's Authorization) go to `url` and its same-origin redirects only:
    urllib3's own rule for the headers its redirects drop.
    """
    guard.check_url(url, settings.max_url_length)
    with _Deadline(settings.fetch_deadline) as deadline:
        for _ in range(settings.max_redirects + 1):
            with _get(session, url, settings, deadline, headers) as response:
                location = response.get_redirect_location()
                if location:
                    target = urljoin(url, location)
                    guard.check_url(target, settings.max_url_length)
                    if headers and not session.connection_from_url(url).is_same_host(target):
                        headers = None
                    url = target
                    continue
                if not 200 <= response.status < 300:
                    raise HttpStatus(f"image server answered {response.status} {response.reason}", response.status)
                return _read_body(response, settings, deadline)
    raise TooManyRedirects(f"more than {settings.max_redirects} redirects")


@contextlib.contextmanager
def _get(session: Session, url: str, settings: Settings, deadline: _Deadline,
         headers: Mapping[str, str] | None) -> Iterator[urllib3.BaseHTTPResponse]:
    """The response to GET `url`, its head read and its body not; its connection goes back
    to the pool only when the body was read to the end (else it is closed)."""
    remaining = deadline.remaining()
    if remaining <= 0:
        raise _too_slow(settings)
    timeout = urllib3.Timeout(connect=min(settings.connect_timeout, remaining),
                              read=min(settings.read_timeout, remaining))
    try:
        response = session.urlopen("GET", url, headers={**session.headers, **(headers or {})}, timeout=timeout,
                                   redirect=False, retries=False, preload_content=False)
    except urllib3.exceptions.NewConnectionError as exc:  # also a ConnectTimeoutError, for history's sake
        raise _cut_short(deadline, settings, f"could not fetch: {_reason(exc)}") from exc
    except urllib3.exceptions.TimeoutError as exc:
        raise FetchTimeout(f"timed out: {_reason(exc)}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _cut_short(deadline, settings, f"could not fetch: {_reason(exc)}") from exc
    try:
        yield response
    finally:
        if not response.isclosed():
            response.close()  # an unread body: the connection cannot serve another request
        response.release_conn()


def _read_body(response: urllib3.BaseHTTPResponse, settings: Settings, deadline: _Deadline) -> bytes:
    limit = settings.max_image_bytes
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"image is {int(declared)} bytes, the limit is {limit}")
    # The size in memory is known up front only for a declared length without content coding
    # (a gzip of one megabyte may inflate to a gigabyte; it is cut at the limit).
    known = declared.isdigit() and response.headers.get("content-encoding", "identity").strip().lower() == "identity"
    lease = budget.current_lease()
    if lease is not None:
        _reserve(lease, int(declared) if known else limit, settings, deadline)
    if known:
        # The usual body in one read: its bytes land in one buffer from C, with no Python
        # loop, chunk list or join (that cost twice the CPU at loopback speed; see
        # docs/performance.md). Each recv still times out, and the watchdog still cuts it.
        body = _receive(response, settings, deadline, lambda: response.read(int(declared), decode_content=False))
        if len(body) < int(declared):
            raise _cut_short(deadline, settings, f"connection closed after {len(body)} of {declared} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    while chunk := _receive(response, settings, deadline, lambda: response.read1(CHUNK_BYTES, decode_content=True)):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"image is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    if deadline.expired:  # the end of the body, or the watchdog's shutdown
        raise _too_slow(settings)
    if lease is not None:
        lease.shrink(size)  # what an unknown length reserved beyond the body goes back at once
    return b"".join(chunks)


def _reserve(lease: budget.Lease, need: int, settings: Settings, deadline: _Deadline) -> None:
    """Hold the body's bytes in the process-wide download budget before reading it, waiting
    within the download's deadline; the lease is released once the image is decoded."""
    try:
        lease.reserve(need, deadline.remaining())
    except TimeoutError:
        raise Overloaded(
            f"too many downloads in progress: {need} bytes could not be held within "
            f"{settings.fetch_deadline:g} s (budget {lease.budget.capacity} bytes); try again later"
        ) from None


def _receive(response: urllib3.BaseHTTPResponse, settings: Settings, deadline: _Deadline,
             read: Callable[[], bytes]) -> bytes:
    """`read()` of the body, each recv bounded by the read timeout and the deadline."""
    remaining = deadline.remaining()
    if remaining <= 0:
        raise _too_slow(settings)
    # Looked up each time: once the last byte is read urllib3 releases the connection,
    # closing its socket when the pool is full (more downloads than pool slots).
    sock = getattr(response.connection, "sock", None)
    if sock is not None:  # a stalled read times out without waiting for the watchdog
        sock.settimeout(min(settings.read_timeout, remaining))
    try:
        return read()
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout) as exc:
        raise FetchTimeout(f"read timed out: {_reason(exc)}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _cut_short(deadline, settings, f"connection broke mid-body: {_reason(exc)}") from exc


def _cut_short(deadline: _Deadline, settings: Settings, message: str) -> ItemError:
    """A download that broke off: the watchdog's doing (a timeout) or the server's."""
    return _too_slow(settings) if deadline.expired else FetchFailed(message)


def _reason(exc: BaseException) -> str:
    """The root cause's message, unless it quotes the URL (which may carry secrets)."""
    root = exc
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    text = str(root)
    return text if text and "://" not in text else type(root).__name__


def _too_slow(settings: Settings) -> FetchTimeout:
    """The one answer for a body not in within the download's deadline, wherever it shows."""
    return FetchTimeout(f"download took longer than {settings.fetch_deadline:g} s")
