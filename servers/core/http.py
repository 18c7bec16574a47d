"""HTTP/1.1 on httptools: GET and HEAD, keep-alive, pipelining, static files, errors.

:class:`HttpApp` holds what all connections of a server share (the file root,
the cached benchmark-page heads); :class:`HttpSession` is one connection. Each
complete request appends its response to the output in arrival order, so
pipelined requests are answered in order. Errors 400, 413 and 431 close the
connection after their response; 404 and 405 keep it when the request allows.
A method the parser knows but we do not serve (POST, PUT, ...) gets 405 with
``Allow``; a method token llhttp does not know at all is a malformed request,
400, so the answer never depends on where the bytes were split.
"""

from __future__ import annotations

import os
from email.utils import formatdate
from urllib.parse import unquote_to_bytes

import httptools

from servers.core import wire
from servers.core.files import FileRoot, content_type
from servers.core.session import FileSlice, Session
from servers.settings import Settings

_GET_HEAD = (b"GET", b"HEAD")
_HEADER_LINE_OVERHEAD = 4  # ": " and CRLF around each name/value pair


class HttpApp:
    """Server-wide HTTP state: settings, file root and cached heads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.files = FileRoot(settings.root) if settings.root is not None else None
        self.dates = wire.DateCache()
        self._page_heads: dict[tuple[str, int], bytes] = {}

    def new_session(self, now: float) -> HttpSession:
        return HttpSession(self, now)

    def page_head(self, connection: int) -> bytes:
        date = self.dates.now()
        key = (date, connection)
        head = self._page_heads.get(key)
        if head is None:
            if len(self._page_heads) > 16:
                self._page_heads.clear()
            head = wire.compose_head(
                200, date, wire.PAGE_CONTENT_TYPE, len(wire.PAGE_BODY), connection
            )
            self._page_heads[key] = head
        return head


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing with an error status (or 0: stop)."""


class HttpSession(Session):
    """One HTTP connection: parser callbacks build responses into the output."""

    def __init__(self, app: HttpApp, now: float) -> None:
        super().__init__(app.settings, now)
        self._app = app
        self._parser = httptools.HttpRequestParser(self)
        self._now = now
        self._abort_status = 0
        self._in_head = False
        self._head_started = 0.0
        self._head_bytes = 0
        self._head_raw = 0
        self._body_bytes = 0
        self._url = bytearray()

    # -- driver side -------------------------------------------------------------------

    def received(self, data: bytes | memoryview, now: float) -> None:
        self._last_activity = now
        if self.closing or not data:
            return
        self._now = now
        if self._in_head:
            self._head_raw += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            self._fail(self._abort_status)
            return
        except httptools.HttpParserUpgrade:
            # Upgrades are not supported: what was answered stands, then the connection ends.
            self.closing = True
            return
        except httptools.HttpParserError:
            self._fail(400)
            return
        if self._in_head and self._head_raw > self.settings.max_header_bytes:
            self._fail(431)

    def eof_received(self, now: float) -> None:
        self.closing = True

    def deadline(self) -> float:
        idle = super().deadline()
        if self._in_head:
            return min(idle, self._head_started + self.settings.header_timeout)
        return idle

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_started = self._now
        self._head_bytes = 0
        self._head_raw = 0
        self._body_bytes = 0
        self._url.clear()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + _HEADER_LINE_OVERHEAD)
        if name.lower() == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0  # the parser itself rejects a malformed length
            if declared > self.settings.max_body_bytes:
                self._abort(413)

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.settings.max_body_bytes:
            self._abort(413)

    def on_message_complete(self) -> None:
        parser = self._parser
        if not parser.should_keep_alive():
            connection = wire.CLOSE
        elif parser.get_http_version() == "1.0":
            connection = wire.KEEP_10
        else:
            connection = wire.KEEP
        self._respond(parser.get_method(), bytes(self._url), connection)
        if connection == wire.CLOSE:
            self.closing = True
            self._abort(0)

    # -- responses ---------------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.settings.max_header_bytes:
            self._abort(431)

    def _abort(self, status: int) -> None:
        self._abort_status = status
        raise _Abort(status)

    def _fail(self, status: int) -> None:
        """Answer an error that ends the connection (status 0: just stop)."""
        if status and not self.closing:
            self._emit(wire.error_response(status, self._app.dates.now(), wire.CLOSE))
        self.closing = True

    def _respond(self, method: bytes, url: bytes, connection: int) -> None:
        app = self._app
        if method not in _GET_HEAD:
            self._emit(wire.error_response(405, app.dates.now(), connection))
            return
        head_only = method == b"HEAD"
        try:
            path = httptools.parse_url(url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            self._fail(400)
            self._abort(0)
            return
        if app.files is None:
            if path == b"/":
                self._emit(app.page_head(connection))
                if not head_only:
                    self._emit(wire.PAGE_BODY)
            else:
                date = app.dates.now()
                self._emit(wire.error_response(404, date, connection, head_only=head_only))
            return
        self._respond_file(path, connection, head_only)

    def _respond_file(self, path: bytes, connection: int, head_only: bool) -> None:
        app = self._app
        assert app.files is not None
        resolved = app.files.resolve(path)
        date = app.dates.now()
        if resolved is None:
            self._emit(wire.error_response(404, date, connection, head_only=head_only))
            return
        if resolved.is_dir:
            body = app.files.listing(resolved, unquote_to_bytes(path).decode("utf-8", "replace"))
            self._emit(wire.compose_head(200, date, "text/html; charset=utf-8", len(body),
                                         connection))
            if not head_only:
                self._emit(body)
            return
        try:
            file = open(resolved.path, "rb")  # noqa: SIM115 - handed to the driver in a FileSlice
        except OSError:
            self._emit(wire.error_response(404, date, connection, head_only=head_only))
            return
        st = os.fstat(file.fileno())
        self._emit(wire.compose_head(
            200, date, content_type(resolved.path), st.st_size, connection,
            last_modified=formatdate(st.st_mtime, usegmt=True),
        ))
        if head_only or st.st_size == 0:
            file.close()
        else:
            self._emit(FileSlice(file, 0, st.st_size))

