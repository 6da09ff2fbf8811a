"""A gunicorn worker whose threads never wait on a slow client.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte
arrives; the thread then reads the request line, headers and body with blocking reads.
A client that sends a byte a second holds that thread for as long as it likes: eight
such clients hold all eight, and `/healthz` stops answering. This worker receives each
request in its main loop instead, without blocking: a thread gets the connection only
once the whole request (line, headers and body) is in, and a request not in within the
read deadline is answered 408 by the loop itself. Closing a connection drains what the
client still sends in the loop too, where gthread does it on its main thread, blocking.
`/healthz` is served by a thread of its own, so a probe never queues behind requests
that hold every thread classifying.

Framing is decided by gunicorn's own parser, run on the bytes received so far, so the
thread that serves the request reads it exactly as the loop did. What the loop does not
hold (a body over the largest the function accepts, a request the parser refuses) is
handed over early; the thread then reads from the socket under the same deadline, and
the connection is closed after the answer.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import selectors
import socket
import time
from concurrent import futures
from http import HTTPStatus

from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine, NoMoreData
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader, SocketUnreader
from gunicorn.workers.gthread import ThreadWorker

from . import watchdog
from .errors import ClassifierError, HeadersTooLarge, RequestLineTooLong, RequestTimeout

PROBES = ("/healthz",)  # served by their own thread: a probe never waits behind a classification
RECV_BYTES = 256 * 1024
LINGER_SECONDS = 2.0  # what gunicorn's own graceful close allows a client to finish sending
LINGER_BYTES = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def answer(error: ClassifierError) -> bytes:
    """A whole HTTP response for an error the server answers itself, as JSON like the
    function's own, closing the connection."""
    body = json.dumps({"error": error.to_dict()}).encode()
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


@dataclasses.dataclass
class _Incoming:
    """One request being received: its bytes so far and what they must add up to."""

    deadline: float
    chunks: list[bytes] = dataclasses.field(default_factory=list)
    size: int = 0
    head: Request | None = None  # parsed once the header block is in
    head_size: int = 0
    body_size: int | None = None  # from Content-Length; None: chunked
    whole: bool = False  # every byte of the request is in `chunks`; else the thread reads the rest


class _Fed(SocketUnreader):
    """The parser's source: bytes the loop received first, then the socket."""

    def __init__(self, sock: socket.socket):
        super().__init__(sock)
        self.received: collections.deque[bytes] = collections.deque()

    def chunk(self, size_hint=None):
        if self.received:
            return self.received.popleft()
        return super().chunk(size_hint)


class ReceivingWorker(ThreadWorker):
    """gthread, except that requests are received whole in the main loop (see the module)."""

    def init_process(self):
        settings = self.app.settings
        self.read_deadline = settings.request_read_deadline
        # Larger bodies are refused by the function from their Content-Length, unread.
        self.max_body = max(settings.max_request_bytes, settings.max_upload_bytes)
        # Bytes held by requests received or being served: at most what the threads could
        # hold reading bodies themselves. Connections wait their turn beyond it.
        self.max_held = self.cfg.threads * self.max_body
        self.max_head = self.cfg.limit_request_line + self.cfg.limit_request_fields * (
            self.cfg.limit_request_field_size + 2) + 4
        self.held = 0
        self.incoming: dict[object, _Incoming] = {}
        self.paused: collections.deque = collections.deque()
        self.lingering: dict[object, tuple[float, int]] = {}
        self.probes = futures.ThreadPoolExecutor(1, thread_name_prefix="probe")
        super().init_process()

    def run(self):
        try:
            super().run()
        finally:
            self.probes.shutdown(wait=False)

    # --- receiving -------------------------------------------------------------------

    def enqueue_req(self, conn):
        """gthread calls this whenever a connection has a request coming: a new one, a
        kept-alive one that became readable, or bytes read ahead behind the last answer."""
        if self.cfg.is_ssl or conn.is_http2:
            return super().enqueue_req(conn)
        incoming = _Incoming(deadline=time.monotonic() + self.read_deadline)
        self.incoming[conn] = incoming
        if conn.parser is not None:
            self._feed(conn, incoming, conn.parser.unreader.take_buffered())
            if conn not in self.incoming:
                return
        conn.sock.setblocking(False)
        self._listen(conn)

    def _listen(self, conn) -> None:
        if self.held >= self.max_held:
            self.paused.append(conn)
        else:
            self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self._receive, conn))

    def _receive(self, conn, _sock) -> None:
        data = _recv(conn.sock, RECV_BYTES)
        if data is None:
            return
        self.poller.unregister(conn.sock)
        if not data:  # the client went away mid-request
            self._drop(conn)
            return
        self._feed(conn, self.incoming[conn], data)
        if conn in self.incoming:
            self._listen(conn)

    def _feed(self, conn, incoming: _Incoming, data: bytes) -> None:
        """Add `data`; hand the connection to a thread once the request is in, or once the
        loop will not hold more of it."""
        if not data:
            return
        seen = incoming.size
        incoming.chunks.append(data)
        incoming.size += len(data)
        self.held += len(data)
        if incoming.head is None:
            self._read_head(conn, incoming)
            if incoming.head is None:
                return
        body = incoming.size - incoming.head_size
        if incoming.body_size is None:  # chunked: whole once the last chunk's empty line is in
            if b"\r\n\r\n" in b"".join(incoming.chunks)[max(incoming.head_size, seen - 3):]:
                incoming.whole = self._chunked_whole(conn, incoming)
            oversized = body > self.max_body
        else:
            incoming.whole = body >= incoming.body_size
            oversized = incoming.body_size > self.max_body  # refused from its Content-Length
        if conn in self.incoming and (incoming.whole or oversized):
            self._dispatch(conn, incoming)

    def _read_head(self, conn, incoming: _Incoming) -> None:
        """Parse the header block once it is in. A head over gunicorn's limits, or one its
        parser refuses, is handed over at once: the thread's parser answers 400, 414, 431."""
        data = b"".join(incoming.chunks)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            line_too_long = len(data) > self.cfg.limit_request_line + 2 and b"\r\n" not in data
            if line_too_long or len(data) > self.max_head:
                self._dispatch(conn, incoming)
            return
        number = conn.parser.req_count + 1 if conn.parser is not None else 1
        try:
            head = Request(self.cfg, IterUnreader([data[:end + 4]]), conn.client, number)
        except Exception:  # noqa: BLE001 - whatever it is, the thread's parse raises it again
            self._dispatch(conn, incoming)
            return
        incoming.head, incoming.head_size = head, end + 4
        reader = head.body.reader
        incoming.body_size = reader.length if isinstance(reader, LengthReader) else None
        expects = any(name == "EXPECT" and value.lower() == "100-continue" for name, value in head.headers)
        if expects and head.version >= (1, 1) and incoming.size == incoming.head_size:
            _send(conn.sock, CONTINUE)  # the client waits for this before it sends the body

    def _chunked_whole(self, conn, incoming: _Incoming) -> bool:
        body = b"".join(incoming.chunks)[incoming.head_size:]
        try:
            ChunkedReader(incoming.head, IterUnreader([body])).read(len(body) + 1)
        except NoMoreData:
            return False
        except Exception:  # noqa: BLE001 - malformed: the thread's parser answers 400
            self._dispatch(conn, incoming)
            return False
        return True

    def _dispatch(self, conn, incoming: _Incoming) -> None:
        """Give the received bytes to the connection's parser and the connection to a thread."""
        del self.incoming[conn]
        if conn.parser is None:
            conn.init()  # the parser; no I/O without TLS
        if not isinstance(conn.parser.unreader, _Fed):
            conn.parser.unreader = _Fed(conn.sock)
        conn.parser.unreader.received.extend(incoming.chunks)
        conn.held = incoming.size
        conn.whole = incoming.whole
        conn.read_deadline = incoming.deadline
        conn.data_ready = True
        probe = incoming.head is not None and incoming.head.path.rstrip("/") in PROBES
        pool = self.probes if probe else self.tpool
        served = pool.submit(self.handle, conn)  # as gthread's enqueue_req, with the pool chosen
        served.add_done_callback(lambda done: self.method_queue.defer(self.finish_request, conn, done))

    # --- serving -----------------------------------------------------------------------

    def handle(self, conn):
        """Serve in a thread; a request not wholly received is read here under its deadline
        (the watchdog shuts the socket's read side when it passes) and closed after the answer."""
        if getattr(conn, "whole", True):
            return super().handle(conn)
        alarm = watchdog.after(max(0.0, conn.read_deadline - time.monotonic()),
                               functools.partial(_shut_reads, conn.sock))
        try:
            return super().handle(conn)
        finally:
            alarm.cancel()

    def handle_request(self, req, conn):
        if not getattr(conn, "whole", True):
            req.force_close()  # what is left of its body is not read
        return super().handle_request(req, conn)

    def handle_error(self, req, client, addr, exc):
        """414 and 431 as JSON, like every answer of the function; the rest as gunicorn does."""
        if isinstance(exc, LimitRequestLine):
            error = RequestLineTooLong(
                f"the request line is over {self.cfg.limit_request_line} bytes: POST the URLs as JSON")
        elif isinstance(exc, LimitRequestHeaders):
            error = HeadersTooLarge(f"request headers over the limits ({self.cfg.limit_request_fields} "
                                    f"fields of at most {self.cfg.limit_request_field_size} bytes)")
        else:
            return super().handle_error(req, client, addr, exc)
        try:
            client.sendall(answer(error))
        except OSError:
            pass

    def finish_request(self, conn, fs):
        """Back on the main loop after a thread served the connection: release its bytes;
        bytes received beyond the request go back to the parser's buffer, where gthread
        looks for a pipelined request; a connection to close lingers in the loop."""
        self.held -= getattr(conn, "held", 0)
        conn.held = 0
        self._resume()
        if conn.parser is not None and isinstance(conn.parser.unreader, _Fed):
            rest = b"".join(conn.parser.unreader.received)
            conn.parser.unreader.received.clear()
            conn.parser.unreader.unread(rest)
        try:
            closing = fs.cancelled() or fs.result() is False
        except Exception:  # noqa: BLE001 - gthread's own path closes it
            closing = False
        if not closing:
            return super().finish_request(conn, fs)
        self.nr_conns -= 1
        self._linger(conn)

    # --- closing -----------------------------------------------------------------------

    def _linger(self, conn) -> None:
        """Half-close, then drain what the client still sends without blocking the loop,
        so the kernel does not reset the answer away; closed on EOF, cap or time."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self._drain, conn))
        except (OSError, ValueError):
            conn.close()
            return
        self.lingering[conn] = (time.monotonic() + LINGER_SECONDS, 0)

    def _drain(self, conn, _sock) -> None:
        until, drained = self.lingering[conn]
        data = _recv(conn.sock, LINGER_BYTES)
        if data is None:
            return
        if data and drained + len(data) < LINGER_BYTES:
            self.lingering[conn] = (until, drained + len(data))
            return
        self._stop_lingering(conn)

    def _stop_lingering(self, conn) -> None:
        del self.lingering[conn]
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _drop(self, conn) -> None:
        """Forget a connection that is being received (or waits to be) and close it."""
        incoming = self.incoming.pop(conn)
        self.held -= incoming.size
        self.nr_conns -= 1
        conn.close()
        self._resume()

    def _resume(self) -> None:
        while self.paused and self.held < self.max_held:
            conn = self.paused.popleft()
            if conn in self.incoming:
                self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self._receive, conn))

    def murder_pending(self):
        """gthread's per-loop sweep, plus: requests past their read deadline get a 408 (a
        connection that sent nothing is just closed, at once when the worker is stopping,
        as gthread closes idle kept-alive ones), lingering closes past theirs end."""
        super().murder_pending()
        now = time.monotonic()
        for conn, incoming in list(self.incoming.items()):
            if incoming.deadline <= now or (not self.alive and not incoming.size):
                if conn in self.paused:
                    self.paused.remove(conn)
                else:
                    self.poller.unregister(conn.sock)
                if incoming.size:
                    _send(conn.sock, answer(RequestTimeout(
                        f"the request did not arrive within {self.read_deadline:g} s")))
                self._drop(conn)
        for conn, (until, _) in list(self.lingering.items()):
            if until <= now:
                self._stop_lingering(conn)


def _recv(sock: socket.socket, size: int) -> bytes | None:
    """What a readable non-blocking socket holds; b"" when the client closed (or the
    connection broke), None when there is nothing after all."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> None:
    """Best effort, never blocking the loop: a client that does not read loses the answer."""
    try:
        sock.send(data)
    except OSError:
        pass


def _shut_reads(sock: socket.socket) -> None:
    """End any read blocked on `sock` (it returns end of file); answers can still be written."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
