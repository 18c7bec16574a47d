"""Small blocking clients for the tests: exact reads and HTTP responses off a socket."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

DATE_RE = re.compile(rb"\r\nDate: [^\r]*\r\n")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def recv_exactly(sock: socket.socket, n: int, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    got = 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"got {got} of {n} bytes")
        sock.settimeout(left)
        chunk = sock.recv(min(1 << 20, n - got))
        if not chunk:
            raise EOFError(f"peer closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_until_closed(sock: socket.socket, timeout: float = 10.0, limit: int = 1 << 26) -> bytes:
    """Everything the peer sends until it closes (bounded in time and size)."""
    deadline = time.monotonic() + timeout
    chunks = []
    total = 0
    while total < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("peer did not close")
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


class ResponseReader:
    """Reads HTTP responses one after another from a socket (Content-Length framed)."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()  # grows in place: a 16 MiB body is not copied per chunk

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete response")
        self.sock.settimeout(left)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError(f"peer closed; buffered: {bytes(self.buf[:200])!r}")
        self.buf += chunk

    def read(self, head_only: bool = False) -> Response:
        deadline = time.monotonic() + self.timeout
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill(deadline)
        head = bytes(self.buf[:end])
        del self.buf[:end + 4]
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode().strip().lower()] = value.decode().strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill(deadline)
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return Response(status, headers, body, head + b"\r\n\r\n" + body)


def request(sock: socket.socket, raw: bytes, head_only: bool = False) -> Response:
    sock.sendall(raw)
    return ResponseReader(sock).read(head_only)


def get(path: str = "/", *, version: str = "1.1", headers: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: test\r\n{headers}\r\n".encode()


def without_date(raw: bytes) -> bytes:
    return DATE_RE.sub(b"\r\nDate: -\r\n", raw)
