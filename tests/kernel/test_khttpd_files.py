"""khttpd root=: files and listings as the core serves them, confined to the root.

Every answer is compared with the user-space core's answer to the same request
over the same directory (tests/differential.py: servers.core in-process, files read back),
Date blanked: listings, content types, Last-Modified, errors. Then the traversal
corpus, FIFOs and device nodes, a non-UTF-8 name, a 16 MiB file with bounded
memory, and unloading in the middle of a large transfer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from servers.core import wire
from tests.differential import core_reply
from tests.kernel import helpers
from tests.kernel.test_khttpd import blank_dates, check_dates

SECRET = b"SECRET-OUTSIDE-THE-ROOT\n"
BIG = 16 << 20
# File names whose Content-Type the core decides by extension (Python's table).
TYPED_NAMES = [
    "index.html", "UPPER.HTML", "style.css", "app.js", "app.mjs", "data.json", "pic.svg",
    "pic.svgz", "photo.jpg", "photo.JPEG", "img.png", "doc.pdf", "a.tar.gz", "b.tgz",
    "c.txt.gz", "d.gz", "e.Z", "f.z", "g.tar.bz2", "h.tbz2", "i.txt.br", "notes.txt",
    "doc.rtf", "song.mid", "x.webp", "README", ".bashrc", "..txt", "trail.", "v.wasm",
    "w.xml", "m.md", "k.csv", "empty.bin", "s.sh", "p.py", "q.c", "r.unknownext",
]
# Names that need escaping, in the link or the text, or are not UTF-8 at all.
ODD_NAMES = [
    b"a b.txt", b"amp&<lt>\"q\"'s.txt", b"caf\xe9.txt", b"\xc3\xa9t\xc3\xa9.txt",
    b"ctl\x01\x7f.txt", b"c1\xc2\x85.txt", b"pct%41.txt", b"plus+semi;.txt", b"back\\slash",
    b"trunc\xe2\x82", b"surr\xed\xa0\x80.txt", b"over\xc0\xaf.txt", b"emoji\xf0\x9f\x98\x80.txt",
    b"q?x#y.txt", b"tab\there",
]


def _write(path: Path, data: bytes, mtime: int | None = None) -> None:
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with typed files, odd names, subdirectories, links in and out, a FIFO,
    a device node and a 16 MiB file; ``outside/secret.txt`` sits next to it."""
    base = tmp_path_factory.mktemp("khttpd-files")
    root = base / "root"
    root.mkdir()
    (base / "outside").mkdir()
    _write(base / "outside" / "secret.txt", SECRET)
    _write(base / "secret.txt", SECRET)
    for i, name in enumerate(TYPED_NAMES):
        _write(root / name, f"{name}\n".encode() * i, 1_700_000_000 + i * 3_601)
    for name in ODD_NAMES:
        _write(root / os.fsdecode(name), b"odd " + name + b"\n")
    for d in ("sub", "a", "a-b", "a.b", "Zed", "sub dir", "%2e%2e"):
        (root / d).mkdir()
    _write(root / "sub" / "inner.txt", b"inner\n", 1_600_000_000)
    (root / "sub" / "deeper").mkdir()
    _write(root / "sub" / "deeper" / "leaf.json", b'{"leaf": true}\n')
    _write(root / "a" / "x", b"x\n")
    _write(root / "%2e%2e" / "decoy.txt", b"decoy\n")
    os.symlink("index.html", root / "link-to-file")
    os.symlink("sub", root / "link-to-dir")
    os.symlink("sub/../sub/inner.txt", root / "link-down-up")
    os.symlink("nowhere", root / "broken")
    os.symlink("loop", root / "loop")
    os.symlink("/etc", root / "out-abs")
    os.symlink(str(base / "outside"), root / "out-abs-dir")
    os.symlink("../outside", root / "out-rel")
    os.symlink("../secret.txt", root / "out-file")
    os.symlink("/proc/self/root", root / "magic")
    # Inside the root only if an absolute link were read relative to it (a chroot).
    os.symlink("/sub/inner.txt", root / "abs-in")
    os.symlink("../../outside/secret.txt", root / "sub" / "out-deep")
    os.mkfifo(root / "fifo")
    os.mknod(root / "devnull", 0o600 | 0o020000, os.makedev(1, 3))  # char 1:3 (/dev/null)
    os.mknod(root / "devzero", 0o600 | 0o020000, os.makedev(1, 5))  # reads never end
    big = bytearray(os.urandom(1 << 20)) * (BIG >> 20)
    big[:16] = b"BIG-FILE-START::"
    _write(root / "big.bin", bytes(big))
    return root


def load_root(port: int, root: Path, **params: object) -> int:
    helpers.load("khttpd", port=port, root=root, **params)
    helpers.connect(port).close()
    return port


@pytest.fixture
def served(port: int, tree: Path) -> int:
    return load_root(port, tree)


class Reader:
    """Whole responses off one connection, pipelined ones included."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = bytearray()

    def _more(self, n: int) -> None:
        chunk = self.s.recv(n)
        assert chunk, f"EOF inside a response: {bytes(self.buf[:300])!r}"
        self.buf += chunk

    def response(self, head_only: bool = False, timeout: float = 10.0) -> bytes:
        """The next response (head, then Content-Length bytes unless HEAD)."""
        self.s.settimeout(timeout)
        while b"\r\n\r\n" not in self.buf:
            self._more(65536)
        end = self.buf.index(b"\r\n\r\n") + 4
        length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", self.buf[:end]).group(1))
        end += 0 if head_only else length
        while len(self.buf) < end:
            self._more(min(1 << 20, end - len(self.buf)))
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out


def read_response(s: socket.socket, head_only: bool = False, timeout: float = 10.0) -> bytes:
    """The one response ``s`` carries; nothing may follow it."""
    reader = Reader(s)
    out = reader.response(head_only, timeout)
    assert not reader.buf, "more bytes than the response announced"
    return out


def ask(port: int, target: bytes, method: bytes = b"GET") -> bytes:
    req = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    with helpers.connect(port) as s:
        s.sendall(req)
        return read_response(s, head_only=method == b"HEAD")


def same_as_core(port: int, root: Path, target: bytes, method: bytes = b"GET") -> bytes:
    """The kernel's answer to one request equals the core's; returns it (Date blanked)."""
    req = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    expected, closes = core_reply(req, root, eof=False)
    assert not closes, expected
    raw = ask(port, target, method)
    check_dates(raw)
    got = blank_dates(raw)
    assert got == expected, (
        f"{method!r} {target!r}:\n kernel {got[:600]!r}\n core   {expected[:600]!r}")
    return got


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def quote_name(name: bytes) -> bytes:
    return b"".join(bytes([c]) if chr(c).isalnum() and c < 0x80 else b"%%%02X" % c for c in name)


SAME_TARGETS = [
    b"/", b"/sub", b"/sub/", b"//sub//./", b"/sub/deeper/", b"/sub/inner.txt", b"/a/",
    b"/sub%20dir/", b"/%252e%252e/", b"/%252e%252e/decoy.txt", b"/index.html", b"/index.html/",
    b"/index.html?x=1#frag", b"/?q", b"/link-to-file", b"/link-to-dir", b"/link-to-dir/",
    b"/link-down-up", b"/broken", b"/loop", b"/missing", b"/sub/missing/", b"/a%2Fx",
    b"/SUB/", b"http://host/sub/", b"http://host", b"*",
]


@pytest.mark.parametrize("target", SAME_TARGETS)
def test_same_bytes_as_core(served: int, tree: Path, target: bytes) -> None:
    same_as_core(served, tree, target)
    same_as_core(served, tree, target, b"HEAD")


def test_every_file_and_type_as_core(served: int, tree: Path) -> None:
    """GET and HEAD of every typed and oddly named file: bytes, type, Last-Modified."""
    for name in [n.encode() for n in TYPED_NAMES] + ODD_NAMES:
        got = same_as_core(served, tree, b"/" + quote_name(name))
        assert status(got) == (404 if b"\\" in name else 200), name
        same_as_core(served, tree, b"/" + quote_name(name), b"HEAD")


def test_listing_escapes_names(served: int, tree: Path) -> None:
    body = same_as_core(served, tree, b"/").split(b"\r\n\r\n", 1)[1]
    assert b'<a href="/caf%E9.txt">caf\\xe9.txt</a>' in body
    assert b'<a href="/%C3%A9t%C3%A9.txt">\xc3\xa9t\xc3\xa9.txt</a>' in body
    assert b"amp&amp;&lt;lt&gt;&quot;q&quot;&#x27;s.txt" in body
    assert b"ctl\\x01\\x7f.txt" in body and b"c1\\x85.txt" in body
    # Directories first, each sorted by its bytes with the slash.
    assert body.index(b">a-b/<") < body.index(b">a.b/<") < body.index(b">a/<")
    assert body.index(b">sub/<") < body.index(b">README<")
    assert b">out-abs-dir/<" in body and b">broken<" in body and b">loop<" not in body


def test_pipelined_files_and_listings(served: int, tree: Path) -> None:
    reqs = [b"GET /index.html HTTP/1.1\r\n\r\n", b"HEAD /sub/ HTTP/1.1\r\n\r\n",
            b"GET /sub/ HTTP/1.1\r\n\r\n", b"GET /fifo HTTP/1.1\r\n\r\n",
            b"GET /caf%E9.txt HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /index.html HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            b"GET /missing HTTP/1.1\r\n\r\n"]
    batch = b"".join(reqs) * 5 + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    expected, closes = core_reply(batch, tree, eof=False)
    assert closes
    with helpers.connect(served) as s:
        s.sendall(batch)
        raw = helpers.read_until_eof(s)
    assert blank_dates(raw) == expected


TRAVERSAL = [
    b"/..", b"/../", b"/../outside/secret.txt", b"/../secret.txt", b"/sub/../../secret.txt",
    b"/sub/../index.html", b"/./../secret.txt", b"/%2e%2e/secret.txt", b"/%2E%2E/secret.txt",
    b"/.%2e/secret.txt", b"/%2e./outside/secret.txt", b"/..%2fsecret.txt", b"/..%2Fsecret.txt",
    b"/%2e%2e%2f%2e%2e%2fsecret.txt", b"/sub%2f..%2f..%2fsecret.txt", b"/..%5csecret.txt",
    b"/..\\secret.txt", b"/%252e%252e/secret.txt", b"/%252e%252e%252fsecret.txt",
    b"/%25252e%25252e/secret.txt", b"//etc/passwd", b"/%2fetc%2fpasswd", b"///etc/passwd",
    b"/out-abs/passwd", b"/out-abs/", b"/out-abs-dir/secret.txt", b"/out-abs-dir/",
    b"/out-rel/secret.txt", b"/out-rel/", b"/out-file", b"/sub/out-deep", b"/magic/etc/passwd",
    b"/magic/", b"/abs-in", b"/link-to-dir/../../secret.txt", b"/index.html%00",
    b"/%00/../secret.txt", b"/sub/%00", b"http://host/../secret.txt", b"http://host/%2e%2e/secret.txt",
    b"/" + b"../" * 40 + b"etc/passwd", b"/" + b"%2e%2e%2f" * 40 + b"etc/passwd",
]


@pytest.mark.parametrize("target", TRAVERSAL)
def test_traversal_refused(served: int, tree: Path, target: bytes) -> None:
    raw = ask(served, target)
    assert SECRET not in raw and b"root:" not in raw
    expected, _ = core_reply(b"GET " + target + b" HTTP/1.1\r\n\r\n", tree, eof=False)
    if target == b"/sub/../index.html":  # ".." is refused even when it stays inside
        assert status(expected) == 404
    assert blank_dates(raw) == expected
    assert status(raw) in (400, 404)


@pytest.mark.parametrize("name", [b"fifo", b"devnull", b"devzero"])
def test_fifo_and_device_answered_at_once(served: int, tree: Path, name: bytes) -> None:
    """A FIFO with no writer and device nodes are never opened: 404 (the core's answer)
    at once, and the worker goes on serving the connection."""
    expected, _ = core_reply(b"GET /" + name + b" HTTP/1.1\r\n\r\n", tree, eof=False)
    assert status(expected) == 404
    with helpers.connect(served) as s:
        start = time.monotonic()
        s.sendall(b"GET /" + name + b" HTTP/1.1\r\n\r\nHEAD /" + name + b" HTTP/1.1\r\n\r\n"
                  b"GET /sub/inner.txt HTTP/1.1\r\n\r\n")
        reader = Reader(s)
        got = [reader.response(timeout=5.0), reader.response(head_only=True, timeout=5.0),
               reader.response(timeout=5.0)]
        took = time.monotonic() - start
    assert took < 3.0
    assert blank_dates(got[0]) == expected
    assert status(got[1]) == 404
    assert got[2].endswith(b"\r\n\r\ninner\n")


def test_non_utf8_name(served: int, tree: Path) -> None:
    got = same_as_core(served, tree, b"/caf%E9.txt")
    assert got.endswith(b"\r\n\r\nodd caf\xe9.txt\n")
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in got
    # The raw byte in the request line is not a valid target: 400, as the core.
    req = b"GET /caf\xe9.txt HTTP/1.1\r\n\r\n"
    expected, closes = core_reply(req, tree, eof=False)
    with helpers.connect(served) as s:
        s.sendall(req)
        raw = helpers.read_until_eof(s)
    assert closes and blank_dates(raw) == expected


def _stalled_client(port: int, target: bytes) -> socket.socket:
    s = helpers.small_buffers()
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET " + target + b" HTTP/1.1\r\n\r\n")
    return s


def test_16mib_file_streamed_with_bounded_memory(served: int, tree: Path) -> None:
    digest = hashlib.sha256((tree / "big.bin").read_bytes()).hexdigest()
    before = helpers.meminfo_kib("MemAvailable")
    stalled = [_stalled_client(served, b"/big.bin") for _ in range(4)]
    try:
        time.sleep(1.5)  # each worker fills its socket buffers, then blocks
        held = before - helpers.meminfo_kib("MemAvailable")
        # Buffering a 16 MiB file per connection would hold 64 MiB here.
        assert held < 24 * 1024, f"4 stalled 16 MiB downloads hold {held} KiB"
        for s in stalled:  # the stalled ones still get every byte
            raw = read_response(s, timeout=60.0)
            head, body = raw.split(b"\r\n\r\n", 1)
            assert b"Content-Length: %d\r\n" % BIG in head
            assert hashlib.sha256(body).hexdigest() == digest
    finally:
        for s in stalled:
            s.close()
    head = same_as_core(served, tree, b"/big.bin", b"HEAD")
    assert b"Content-Type: application/octet-stream\r\n" in head
    with helpers.connect(served) as s:
        s.sendall(b"GET /big.bin HTTP/1.1\r\n\r\nGET /index.html HTTP/1.1\r\n\r\n")
        reader = Reader(s)
        body = reader.response(timeout=60.0).split(b"\r\n\r\n", 1)[1]
        assert hashlib.sha256(body).hexdigest() == digest
        assert reader.response().startswith(b"HTTP/1.1 200 OK\r\n")


def _umount(where: Path) -> bool:
    """Unmount ``where``, retrying for 5 s (a file closed by a kworker is released by
    the delayed fput a moment later); whether it went."""
    for _ in range(50):
        if subprocess.run(["umount", str(where)], capture_output=True,
                          timeout=10).returncode == 0:
            return True
        time.sleep(0.1)
    return False


def test_unload_mid_transfer(port: int, tmp_path: Path) -> None:
    """rmmod while 4 clients are in the middle of 16 MiB downloads: done within 2 s, the
    clients see the end, and nothing under the root stays referenced (it unmounts)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "khttpd-test", str(mnt)],
                   check=True, timeout=10)
    mounted = True
    clients: list[socket.socket] = []
    try:
        (mnt / "big.bin").write_bytes(os.urandom(1 << 20) * (BIG >> 20))
        load_root(port, mnt)
        clients = [_stalled_client(port, b"/big.bin") for _ in range(4)]
        for s in clients:  # every transfer is under way
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        took = helpers.unload("khttpd")
        assert took < 2.0, f"rmmod during 4 large transfers took {took:.2f}s"
        for s in clients:  # each sees its connection end, short of the whole file
            got = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            assert got < BIG
        mounted = not _umount(mnt)
        assert not mounted, "the root's file system stays busy after rmmod"
    finally:
        for s in clients:
            s.close()
        if mounted:
            helpers.unload_all()
            _umount(mnt)


def test_every_extension_typed_as_core(port: int, tmp_path: Path) -> None:
    """A file per extension of Python's table (upper and lower case, with the suffix
    and encoding maps' extensions), typed as the core types it."""
    import mimetypes

    types = mimetypes.MimeTypes()
    exts = set(types.types_map[True]) | set(types.types_map[False])
    exts |= set(types.suffix_map) | set(types.encodings_map)
    root = tmp_path / "types"
    root.mkdir()
    names = []
    for ext in sorted(exts):
        for name in (f"f{ext}", f"F{ext.upper()}", f"g{ext}.gz", f"h.tar{ext}"):
            if name not in names:
                names.append(name)
                _write(root / name, b"", 1_650_000_000)
    load_root(port, root)
    with helpers.connect(port) as s:
        reader = Reader(s)
        for name in names:
            target = b"/" + quote_name(name.encode())
            req = b"HEAD " + target + b" HTTP/1.1\r\n\r\n"
            s.sendall(req)
            got = blank_dates(reader.response(head_only=True))
            assert got == core_reply(req, root, eof=False).answer, name
    same_as_core(port, root, b"/")


def test_listing_over_the_limit_is_500(port: int, tmp_path: Path) -> None:
    """A directory whose names total over 1 MiB is answered 500 at once (the core lists
    it: a documented limit), and the connection goes on."""
    root = tmp_path / "many"
    (root / "d").mkdir(parents=True)
    for i in range(4200):  # 4200 names of 255 bytes: over 1 MiB
        (root / "d" / (f"{i:06d}" + "n" * 249)).touch()
    load_root(port, root)
    with helpers.connect(port) as s:
        start = time.monotonic()
        s.sendall(b"GET /d/ HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        reader = Reader(s)
        over = reader.response(timeout=30.0)
        assert blank_dates(over) == wire.error_response(500, "-", wire.KEEP)
        assert status(reader.response(timeout=30.0)) == 200
        assert time.monotonic() - start < 20.0


def test_stalled_download_closed_after_idle_timeout(port: int, tree: Path) -> None:
    """A client that stops reading a large file is closed once a piece has waited
    idle_timeout: the worker is not pinned."""
    load_root(port, tree, idle_timeout=2)
    s = _stalled_client(port, b"/big.bin")
    try:
        time.sleep(6.0)  # 2 s for a piece, and room for a slow guest
        got = 0
        s.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        assert 0 < got < BIG
    finally:
        s.close()
    assert status(ask(port, b"/sub/inner.txt")) == 200


def test_load_message_names_the_confinement(served: int, tree: Path) -> None:
    line = [ln for ln in helpers.dmesg().splitlines()
            if f"khttpd: listening on port {served}, serving {tree} " in ln][-1]
    assert "(lookups confined by LOOKUP_BENEATH)" in line, line


def test_root_must_be_a_directory(port: int, tree: Path) -> None:
    for bad in (tree / "index.html", tree / "missing"):
        with pytest.raises((OSError, helpers.Unavailable)):
            helpers.load("khttpd", port=port, root=bad)
        assert "khttpd" not in helpers.loaded_modules()


def test_without_root_only_the_page(port: int) -> None:
    helpers.load("khttpd", port=port)
    got = blank_dates(ask(port, b"/index.html"))
    assert got == wire.error_response(404, "-", wire.KEEP)
