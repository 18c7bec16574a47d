"""HTTP/1.1 on httptools: GET and HEAD, keep-alive, pipelining, static files, errors.

:class:`HttpApp` holds what all connections of a server share (the file root,
the cached benchmark-page heads); :class:`HttpSession` is one connection. Each
complete request appends its response to the output in arrival order, so
pipelined requests are answered in order. Errors 400, 413 and 431 close the
connection after their response; 403, 404, 405 and 500 keep it when the request
allows. An unexpected exception while answering one request gives that request
a 500 and one log line on stderr; the connection and the server go on.
A method the parser knows but we do not serve (POST, PUT, ...) gets 405 with
``Allow``; a method token llhttp does not know at all is a malformed request,
400, so the answer never depends on where the bytes were split.

Input is fed to the parser in pieces that end at a request head's blank line, so
parsing stops between requests once the output passes the write high-water mark
(see :mod:`servers.core.session`). The header deadline runs from the first byte
of a request (blank lines before a request line included) to the end of its
head; after a response it starts again at the first byte of the next request.
An HTTP/1.0 request carrying Transfer-Encoding has no trustworthy framing (RFC
9112 §6.1): it is answered when its head ends, then the connection closes.

With ``--redis``, ``/guestbook`` is the guestbook app (:mod:`servers.core.guestbook`):
GET and HEAD show the page, POST stores an entry (its urlencoded body is kept, up
to ``--max-body-bytes``). Its response waits for a backend call the driver
performs; later responses wait behind it (see :mod:`servers.core.session`).
Without ``--redis`` the path is like any other.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import unquote_to_bytes

import httptools

from servers.core import wire
from servers.core.files import FileRoot, content_type
from servers.core.guestbook import AppResponse, BackendCall, Guestbook, unavailable
from servers.core.session import FileSlice, Session
from servers.settings import Settings

_GET_HEAD = (b"GET", b"HEAD")
_HEADER_LINE_OVERHEAD = 4  # ": " and CRLF around each name/value pair
_HEAD_END = b"\r\n\r\n"
# The lengths of the header names the core reads (connection, content-type,
# content-length, proxy-connection, transfer-encoding): others are not lowered.
_READ_NAME_LENGTHS = frozenset((10, 12, 14, 16, 17))


class HttpApp:
    """Server-wide HTTP state: settings, file root and cached heads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.files = FileRoot(settings.root) if settings.root is not None else None
        self.guestbook = (Guestbook(settings.backend_wait_ms)
                          if settings.redis is not None else None)
        self.dates = wire.DateCache()
        # Whole responses that differ only by their Date, composed once per second: the
        # benchmark page per connection kind (wire.KEEP, CLOSE, KEEP_10) as (with body,
        # head only), and the error responses by (status, connection kind, head only).
        self._second = -1
        self._pages: list[tuple[bytes, bytes]] = []
        self._errors: dict[tuple[int, int, bool], bytes] = {}

    def new_session(self, now: float) -> HttpSession:
        return HttpSession(self, now)

    def page(self, connection: int, head_only: bool) -> bytes:
        """The benchmark page's response."""
        second = int(time.time())
        if second != self._second:
            self._turn_second(second)
        return self._pages[connection][head_only]

    def error(self, status: int, connection: int, head_only: bool = False) -> bytes:
        """An error response."""
        second = int(time.time())
        if second != self._second:
            self._turn_second(second)
        key = (status, connection, head_only)
        response = self._errors.get(key)
        if response is None:
            response = self._errors[key] = wire.error_response(
                status, self.dates.at(second), connection, head_only=head_only
            )
        return response

    def _turn_second(self, second: int) -> None:
        date = self.dates.at(second)
        self._pages = []
        for kind in (wire.KEEP, wire.CLOSE, wire.KEEP_10):  # in index order
            head = wire.compose_head(200, date, wire.PAGE_CONTENT_TYPE, len(wire.PAGE_BODY), kind)
            self._pages.append((head + wire.PAGE_BODY, head))
        self._errors.clear()
        self._second = second


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing with an error status (or 0: stop)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class HttpSession(Session):
    """One HTTP connection: parser callbacks build responses into the output."""

    def __init__(self, app: HttpApp, now: float) -> None:
        super().__init__(app.settings, now)
        self._app = app
        self._max_head = app.settings.max_header_bytes
        self._max_body = app.settings.max_body_bytes
        self._serves_page = app.files is None  # "/" is the benchmark page
        self._parser = httptools.HttpRequestParser(self)
        self._now = now
        self._head_started: float | None = None  # a request head is in progress since then
        self._in_body = False
        self._head_bytes = 0
        self._head_raw = 0
        self._url: bytes | bytearray = b""  # bytes, or a bytearray once it came in pieces
        # What only some requests set, reset when one did (see _reset_request).
        self._unusual = False
        self._body_bytes = 0
        self._transfer_encoding = False
        self._too_large = False  # a declared length over the limit: 413 once the head ends
        self._body_left = 0  # Content-Length bytes of the body not parsed yet
        self._content_type: bytes | None = None
        # A Connection header was read: only then can the version matter (HTTP/1.0 keeps
        # the connection only when it asks), so the version is not read for the others.
        self._connection_header = False
        self._body: bytearray | None = None  # kept only for a guestbook POST

    # -- driver side -------------------------------------------------------------------

    def _feed(self, data: memoryview, now: float) -> int:
        self._now = now
        total = len(data)
        raw = data.tobytes()
        end = raw.find(_HEAD_END)
        if self._body_left == 0 and (end < 0 or end + len(_HEAD_END) == total):
            self._feed_piece(data)  # the common case: one request, or part of one
            return total
        end = self._end_of_piece(raw, 0)
        if end == total:
            self._feed_piece(data)
            return total
        pos = 0
        while True:
            # Released at once: no view of the driver's buffer outlives this call, even
            # one a traceback's frames still reference.
            with data[pos:end] as piece:
                self._feed_piece(piece)
            pos = end
            if pos == total or self._closing or self.blocked:
                return total if self._closing else pos
            end = self._end_of_piece(raw, pos)

    def _end_of_piece(self, raw: bytes, start: int) -> int:
        end = _end_of_piece(raw, start)
        if self._body_left > 0:
            # A Content-Length body ends a piece too, so the head after it is counted
            # from its first byte, as any other (the 431 rule of WIRE.md).
            return min(end, start + self._body_left)
        return end

    def _feed_piece(self, piece: memoryview) -> None:
        if self._head_started is None and not self._in_body:
            self._head_started = self._now  # the first byte of a request, blank lines too
        if self._head_started is not None:
            room = self._max_head - self._head_raw
            if len(piece) > room:
                # Only the head's first max_header_bytes are parsed: a fault among them
                # is 400, else the byte past the limit is the fault, 431 (WIRE.md),
                # wherever the reads split the head.
                with piece[:max(room, 0)] as within:
                    self._feed_piece(within)
                self._fail(431)
                return
            self._head_raw += len(piece)
        try:
            self._parser.feed_data(piece)
        except httptools.HttpParserCallbackError as exc:
            # Not kept in a local: the exception's frames point back at this one.
            self._callback_failed(exc.__context__)
            return
        except httptools.HttpParserUpgrade:
            # Upgrades are not supported: what was answered stands, then the connection ends.
            self._closing = True
            return
        except httptools.HttpParserError:
            self._fail(400)
            return
        if self._head_started is not None and self._head_raw > self._max_head:
            self._fail(431)

    def _callback_failed(self, cause: BaseException | None) -> None:
        if isinstance(cause, _Abort):
            self._fail(cause.status)
        else:
            self._log_failure(cause)
            self._fail(500)

    def deadline(self) -> float:
        idle = super().deadline()
        if self._head_started is not None:
            return min(idle, self._head_started + self.settings.header_timeout)
        return idle

    # -- parser callbacks --------------------------------------------------------------

    # The parser calls only the callbacks defined here, each a Python call per request
    # (or per header): they keep to a few attribute updates, and what only some
    # requests need (a body, the headers the core reads) costs only those requests.

    def on_message_begin(self) -> None:
        if self._head_started is None:
            self._head_started = self._now
        self._head_bytes = 0
        self._url = b""
        if self._unusual:
            self._reset_request()

    def _reset_request(self) -> None:
        self._unusual = False
        self._body_bytes = 0
        self._transfer_encoding = False
        self._too_large = False
        self._body_left = 0
        self._content_type = None
        self._connection_header = False
        self._body = None

    def on_url(self, url: bytes) -> None:
        if self._url:
            if type(self._url) is bytes:
                self._url = bytearray(self._url)  # the target comes in pieces
            self._url += url
        else:
            self._url = url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head:
            self._abort(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + _HEADER_LINE_OVERHEAD
        if self._head_bytes > self._max_head:
            self._abort(431)
        if len(name) not in _READ_NAME_LENGTHS:
            return
        lower = name.lower()
        if lower == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0  # the parser itself rejects a malformed length
            # Decided when the head ends, so a fault later in the head wins whatever
            # the reads split (WIRE.md's table).
            self._too_large = declared > self._max_body
            self._body_left = declared
        elif lower == b"transfer-encoding":
            self._transfer_encoding = True
        elif lower == b"content-type":
            self._content_type = value
        elif lower == b"connection" or lower == b"proxy-connection":  # llhttp reads both
            self._connection_header = True
        else:
            return
        self._unusual = True

    def on_headers_complete(self) -> None:
        if self._too_large:
            self._abort(413)
        self._head_started = None
        self._head_raw = 0
        self._in_body = True
        if self._app.guestbook is not None and self._parser.get_method() == b"POST" \
                and self._is_guestbook(bytes(self._url)):
            self._body = bytearray()
            self._unusual = True
        if self._transfer_encoding and self._parser.get_http_version() == "1.0":
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing, so what
            # follows the head cannot be trusted: answer now, then close.
            self._answer(wire.CLOSE)
            self._closing = True
            self._abort(0)

    def on_body(self, body: bytes) -> None:
        self._unusual = True
        if not self._transfer_encoding:
            self._body_left -= len(body)
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            self._abort(413)
        if self._body is not None:
            self._body += body

    def on_message_complete(self) -> None:
        self._in_body = False
        self._body_left = 0
        parser = self._parser
        if not parser.should_keep_alive():
            connection = wire.CLOSE
        elif self._connection_header and parser.get_http_version() == "1.0":
            # Only a Connection header keeps an HTTP/1.0 connection, so a request
            # without one kept alive is not 1.0 (reading the version costs a string).
            connection = wire.KEEP_10
        else:
            connection = wire.KEEP
        self._answer(connection)
        if connection == wire.CLOSE:
            self._closing = True
            self._abort(0)

    # -- responses ---------------------------------------------------------------------

    def _abort(self, status: int) -> None:
        raise _Abort(status)

    def _fail(self, status: int) -> None:
        """Answer an error that ends the connection (status 0: just stop)."""
        if status and not self._closing:
            self._emit(self._app.error(status, wire.CLOSE))
        self._closing = True

    def _answer(self, connection: int) -> None:
        """Respond to the request just parsed; an unexpected failure becomes a 500."""
        method = self._parser.get_method()
        if self._url == b"/" and self._serves_page and method in _GET_HEAD:
            # The benchmark page, most requests: nothing to route, nothing to fail.
            self._emit(self._app.page(connection, method == b"HEAD"))
            return
        url = bytes(self._url)
        mark = self._output_mark()
        try:
            self._respond(method, url, connection)
        except _Abort:
            raise
        except Exception as exc:  # noqa: BLE001 - one request fails, not the connection
            self._drop_output_since(mark)
            self._log_failure(exc, method, url)
            self._emit(self._app.error(500, connection, method == b"HEAD"))

    @staticmethod
    def _log_failure(exc: BaseException | None, method: bytes = b"", url: bytes = b"") -> None:
        """One line on stderr: the request, the exception and where it was raised."""
        where = ""
        tb = exc.__traceback__ if exc is not None else None
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            code = tb.tb_frame.f_code
            where = f" at {os.path.basename(code.co_filename)}:{tb.tb_lineno}"
        request = f"{method.decode('latin-1')} {url.decode('latin-1')!r}: " if method else ""
        sys.stderr.write(f"http: 500 Internal Server Error: {request}{exc!r}{where}\n")
        sys.stderr.flush()

    def _respond(self, method: bytes, url: bytes, connection: int) -> None:
        app = self._app
        if app.guestbook is not None and self._is_guestbook(url):
            self._respond_guestbook(app.guestbook, method, connection)
            return
        if method not in _GET_HEAD:
            self._emit(app.error(405, connection))
            return
        head_only = method == b"HEAD"
        try:
            # "/" (every benchmark request) is its own path; others are split by httptools
            path = url if url == b"/" else httptools.parse_url(url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            self._fail(400)
            self._abort(0)
            return
        if app.files is None:
            if path == b"/":
                self._emit(app.page(connection, head_only))
            else:
                self._emit(app.error(404, connection, head_only))
            return
        self._respond_file(path, connection, head_only)

    @staticmethod
    def _is_guestbook(url: bytes) -> bool:
        try:
            return httptools.parse_url(url).path == Guestbook.path
        except httptools.HttpParserInvalidURLError:
            return False

    def _respond_guestbook(self, app: Guestbook, method: bytes, connection: int) -> None:
        if method in _GET_HEAD:
            self._await_app(app.page_call(), app.render_page, connection, method == b"HEAD")
        elif method == b"POST":
            call = app.post_call(self._content_type, bytes(self._body or b""))
            if isinstance(call, AppResponse):  # refused before any backend call
                self._emit_app(call, connection, head_only=False)
            else:
                self._await_app(call, app.finish_post, connection, head_only=False)
        else:
            self._emit(self._app.error(405, connection))

    def _await_app(self, call: BackendCall, render: Callable[[list[object]], AppResponse],
                   connection: int, head_only: bool) -> None:
        def finish(replies: list[object] | None) -> None:
            try:
                answer = unavailable() if replies is None else render(replies)
                self._emit_app(answer, connection, head_only)
            except Exception as exc:  # noqa: BLE001 - this request fails, not the driver
                self._log_failure(exc, b"GUESTBOOK", Guestbook.path)
                self._emit(self._app.error(500, connection, head_only))

        self._await_backend(call, finish)

    def _emit_app(self, answer: AppResponse, connection: int, head_only: bool) -> None:
        self._emit(wire.compose_head(answer.status, self._app.dates.now(), answer.content_type,
                                     len(answer.body), connection, location=answer.location))
        if not head_only:
            self._emit(answer.body)

    def _respond_file(self, path: bytes, connection: int, head_only: bool) -> None:
        app = self._app
        assert app.files is not None
        resolved = app.files.resolve(path)
        date = app.dates.now()
        if resolved is None:
            self._emit(app.error(404, connection, head_only))
            return
        if resolved.is_dir:
            try:
                body = app.files.listing(resolved, unquote_to_bytes(path))
            except PermissionError:
                self._emit(app.error(403, connection, head_only))
                return
            except (FileNotFoundError, NotADirectoryError):
                self._emit(app.error(404, connection, head_only))
                return
            self._emit(wire.compose_head(200, date, "text/html; charset=utf-8", len(body),
                                         connection))
            if not head_only:
                self._emit(body)
            return
        # Opened only to learn that it can be read and how long it is: the descriptor is
        # closed at once, and the FileSlice opens the file again when its turn comes.
        try:
            fd = os.open(resolved.path, os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            self._emit(app.error(403, connection, head_only))
            return
        except OSError:
            self._emit(app.error(404, connection, head_only))
            return
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self._emit(wire.compose_head(
            200, date, content_type(resolved.path), st.st_size, connection,
            last_modified=formatdate(st.st_mtime, usegmt=True),
        ))
        if not head_only and st.st_size > 0:
            self._emit(FileSlice(resolved.path, 0, st.st_size, (st.st_dev, st.st_ino)))


def _end_of_piece(raw: bytes, start: int) -> int:
    """Where the piece of input from ``start`` ends: after the next blank line that ends
    a request head, or at the end of the data. One piece completes at most the request
    whose body it starts with and one more, so parsing can pause between requests."""
    end = raw.find(_HEAD_END, start)
    return len(raw) if end < 0 else end + len(_HEAD_END)
