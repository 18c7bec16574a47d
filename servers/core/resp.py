"""RESP, the Redis protocol, as the core speaks it: commands encoded, replies decoded.

Commands are encoded here (a RESP array of bulk strings is a few lines, and the
encoding is what the C server mirrors); replies are decoded by ``hiredis``, the C
parser redis-py uses, which handles every reply type, nesting and partial input.
Nothing here touches a socket: drivers move the bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

import hiredis

Arg = bytes | str | int
ReplyError = hiredis.ReplyError


def _bulk(arg: Arg) -> bytes:
    if isinstance(arg, str):
        data = arg.encode("utf-8")
    elif isinstance(arg, int):
        data = str(arg).encode("ascii")
    else:
        data = bytes(arg)
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP array of bulk strings: ``encode_command("INCR", "k")``."""
    if not args:
        raise ValueError("a command needs at least its name")
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


def encode_pipeline(commands: Iterable[tuple[Arg, ...]]) -> bytes:
    """Several commands sent back to back; Redis answers them in order."""
    return b"".join(encode_command(*c) for c in commands)


class ReplyReader:
    """Incremental reply decoder: feed what the Redis socket gave, take whole replies.

    An error reply (``-ERR ...``) comes back as a :data:`ReplyError` value, not an
    exception, so one failed command in a pipeline does not hide the others'
    replies. A protocol violation raises ``hiredis.ProtocolError``.
    """

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._ready: list[object] = []

    def feed(self, data: bytes | memoryview) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            self._ready.append(reply)

    @property
    def available(self) -> int:
        """How many whole replies have been decoded and not yet taken."""
        return len(self._ready)

    def take(self, count: int) -> list[object]:
        """The next ``count`` replies (all must be available)."""
        if count > len(self._ready):
            raise ValueError(f"{count} replies asked, {len(self._ready)} available")
        out, self._ready = self._ready[:count], self._ready[count:]
        return out
