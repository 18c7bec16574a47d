"""A Hypothesis grammar of HTTP/1.x byte streams, right and wrong, for differential tests.

:func:`streams` draws what a hostile client sends on one connection: 1-4 pipelined
requests (the last one asks ``Connection: close``), each built from a request line
(methods known, unknown, lower-case or with odd bytes; targets the server serves and
odd or encoded ones; versions 1.0, 1.1, 0.9, 2.0 and junk), header lines in several
spellings, separators and whitespace, and a body framed by Content-Length or chunked;
any part may be swapped for a malformed variant. The stream is then cut at random
points into the pieces the client writes one by one. Every choice shrinks towards a
plain ``GET / HTTP/1.1``, so a failing stream shrinks to its one relevant fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

# Oversized parts, each just past the servers' default limits (Settings: 8 KiB of head,
# 1 MiB of body), so one drawn part is enough to reach 413 or 431.
BIG_HEADER = b"X-Big: " + b"b" * 8300
BIG_LENGTH = b"%d" % (1024 * 1024 + 1)

METHODS = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
    b"CONNECT", b"PROPFIND", b"FOO", b"get", b"Get", b"head", b"PLAY", b"PRI", b"SOURCE",
    b"G\x00T", b"GET\x80", b"GE T", b"", b"\xff", b"GETGETGETGETGETGETGET", b"DESCRIBE",
]
ODD_TARGETS = [
    b"*", b"http://zoo/x?y", b"/%2e%2e/", b"/../etc/passwd", b"/a%20b", b"/%zz", b"/?q=1",
    b"/x#frag", b"/\x80", b"/a\x01b", b"/a b", b"", b"//", b"/" + b"a" * 300,
    b"%2F", b"/index.html/", b"/.",
]
VERSIONS = [
    b" HTTP/1.1", b" HTTP/1.0", b"", b" HTTP/2.0", b" HTTP/0.9", b" HTTP/3.0",
    b" HTTP/1.2", b" HTTP/1.x", b" http/1.1", b" HTTP/11", b" HTTP/1.1 ", b"  HTTP/1.1",
    b" HTTP/", b" HTTP/1.1x", b"\n", b" RTSP/1.0", b" RTSP/1.1", b" ICE/1.0",
]
LINE_ENDS = [b"\r\n", b"\n", b"\r", b"\r\r\n"]
SEPARATORS = [b": ", b":", b":\t", b" : ", b":  ", b" :"]
NAMES = [b"Host", b"host", b"HOST", b"X-A", b"Accept", b"X\x00A", b"Bad Name", b"",
         b"X-\x80", b"User-Agent"]
VALUES = [b"zoo", b"", b"a b", b" spaced ", b"a\x7fb", b"\xc3\xa9", b"a\x00b", b"x" * 40]


@dataclass(frozen=True)
class Stream:
    """One connection's bytes and the pieces the client writes them in."""

    data: bytes
    pieces: tuple[bytes, ...]

    def __repr__(self) -> str:  # what a shrunk failure prints
        return f"Stream(data={self.data!r}, pieces={list(self.pieces)!r})"


def _pick(common: list[bytes], odd: list[bytes]) -> st.SearchStrategy[bytes]:
    """Mostly one of ``common``, sometimes one of ``odd`` (shrinks to common[0])."""
    return st.one_of(st.sampled_from(common), st.sampled_from(odd))


def _line_end() -> st.SearchStrategy[bytes]:
    return st.one_of(st.just(b"\r\n"), st.sampled_from(LINE_ENDS))


@st.composite
def _header(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["plain", "odd", "fold", "no-colon", "big"]))
    end = draw(_line_end())
    if kind == "fold":
        return b"X-Fold: a" + end + draw(st.sampled_from([b" b", b"\tb"])) + end
    if kind == "no-colon":
        return b"NoColon" + end
    if kind == "big":
        return BIG_HEADER + end
    name = draw(st.sampled_from(NAMES)) if kind == "odd" else b"Host"
    value = draw(st.sampled_from(VALUES)) if kind == "odd" else b"zoo"
    sep = draw(st.sampled_from(SEPARATORS)) if kind == "odd" else b": "
    return name + sep + value + end


@st.composite
def _connection(draw: st.DrawFn, last: bool) -> bytes:
    if last:
        return draw(st.sampled_from([b"Connection: close", b"connection: Close",
                                     b"Connection: keep-alive, close"])) + b"\r\n"
    return draw(st.sampled_from([b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n",
                                 b"Connection: upgrade\r\nUpgrade: x\r\n",
                                 b"Connection: foo\r\n"]))


@st.composite
def _framing(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Framing headers and the body bytes that follow the head."""
    kind = draw(st.sampled_from(["none", "length", "chunked", "length-odd", "te-odd",
                                 "too-large", "both"]))
    if kind == "none":
        return b"", b""
    if kind == "length":
        body = draw(st.binary(max_size=12))
        sent = draw(st.sampled_from([len(body), max(len(body) - 1, 0), len(body) + 2]))
        return b"Content-Length: %d\r\n" % len(body), (body + b"zz")[:sent]
    if kind == "chunked":
        chunks = draw(st.lists(st.binary(min_size=1, max_size=6), max_size=3))
        ext = draw(st.sampled_from([b"", b";x=1", b" ", b"z", b';q="a b"', b";", b"\t",
                                    b";a b", b";a;b=", b';q="\x80";r']))
        body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks)
        body += draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nT: x\r\n\r\n", b"0\r\n",
                                      b"0\r\nNoColon\r\n\r\n", b"0\r\nT: \x01\r\n\r\n",
                                      b"0\n\n", b"5\r\nab\r\n", b"", b"100001\r\nab",
                                      b"10000000000000000\r\n", b"00000000000000000001\r\na"]))
        return b"Transfer-Encoding: chunked\r\n", body
    if kind == "length-odd":
        value = draw(st.sampled_from([b"-1", b"1 2", b"0x10", b"", b"+3", b"3, 3",
                                      b"99999999999999999999999"]))
        twice = draw(st.sampled_from([b"", b"Content-Length: 0\r\n"]))
        return b"Content-Length: " + value + b"\r\n" + twice, b"abc"
    if kind == "te-odd":
        value = draw(st.sampled_from([b"gzip", b"gzip, chunked", b"chunked, gzip", b"chunked,",
                                      b"", b"identity", b"CHUNKED"]))
        return b"Transfer-Encoding: " + value + b"\r\n", b"0\r\n\r\n"
    if kind == "too-large":
        return b"Content-Length: " + BIG_LENGTH + b"\r\n", b""
    return b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"


@st.composite
def _request(draw: st.DrawFn, targets: list[bytes], last: bool) -> bytes:
    lead = draw(st.one_of(st.just(b""), st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b" "])))
    method = draw(_pick([b"GET", b"HEAD"], METHODS))
    sep = draw(st.one_of(st.just(b" "), st.sampled_from([b"  ", b"\t"])))
    target = draw(_pick(targets, ODD_TARGETS))
    version = draw(_pick([b" HTTP/1.1", b" HTTP/1.0"], VERSIONS))
    end = draw(_line_end())
    headers = b"".join(draw(st.lists(_header(), max_size=3)))
    framing, body = draw(_framing())
    connection = draw(_connection(last))
    order = draw(st.permutations([headers, framing, connection]))
    blank = draw(_line_end())
    return lead + method + sep + target + version + end + b"".join(order) + blank + body


@st.composite
def streams(draw: st.DrawFn, targets: list[bytes]) -> Stream:
    """One connection's stream: 1-4 requests, the last asking to close, cut into pieces.

    ``targets`` are the paths the server under test serves (or misses on purpose); the
    first one is where shrinking goes.
    """
    count = draw(st.integers(min_value=1, max_value=4))
    data = b"".join(draw(_request(targets, last=i == count - 1)) for i in range(count))
    cuts = draw(st.lists(st.integers(min_value=1, max_value=max(len(data) - 1, 1)),
                         max_size=4, unique=True))
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    pieces = tuple(data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a)
    return Stream(data, pieces)
