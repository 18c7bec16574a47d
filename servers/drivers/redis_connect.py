"""A unix-socket connect to Redis that never blocks a loop and survives a full backlog.

A non-blocking ``connect`` on a unix stream socket either completes at once or
fails with ``EAGAIN`` when the listener's accept backlog is full (Redis's is
511: a burst of a thousand new pool connections meets it). It never answers
``EINPROGRESS``, so there is nothing to wait for: the caller tries again after
:data:`RETRY_S`, within its connect deadline. The loops' own unix connects do
not handle that case (uvloop raises ``BlockingIOError``; the stdlib loop and
trio hand back a socket that is not connected), so the event-loop drivers
connect here and give the loop the connected socket.
"""

from __future__ import annotations

import errno
import socket

RETRY_S = 0.002  # a unix connect that met a full backlog is tried again after this


def unix_connect(path: str) -> socket.socket | None:
    """A connected non-blocking unix socket, or None while the backlog is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EAGAIN:
            return None
        raise
    return sock
