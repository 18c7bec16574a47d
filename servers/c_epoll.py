"""c-epoll: the native user-space ceiling, a single-threaded C epoll loop.

The loop itself is the C extension ``zoo_cepoll`` (built by setup.py from
``servers/native/cepoll.c``; a top-level module, so no source folder shadows it).
Every response text it sends (page, content types, reasons, error bodies, server
name) is read here from ``servers/core/wire.json`` and handed to C, so c-epoll
answers with the same bytes as the Python core.

With ``--redis``, ``/guestbook`` is the core's guestbook app
(:mod:`servers.core.guestbook`) in C: the same form checks, JSON entries and page,
its texts read here from wire.json's "guestbook" section (and the core's page call,
RESP-encoded, from :class:`~servers.core.guestbook.Guestbook`). Redis is reached
over non-blocking connections in the same epoll: a pool of up to
``--backend-pool`` per process, one call on each at a time, calls beyond waiting
FIFO; the connect and reply timeouts and the unix connect retry are the Python
drivers' (:mod:`servers.drivers.blocking_backend`, :mod:`servers.drivers.redis_connect`).

Limits: no ``--root`` (static files). Other request bodies (Content-Length or
chunked) are read and discarded, as in the Python core.
``--workers N`` runs N processes, each with its own SO_REUSEPORT listener.
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path
from typing import Any

import servers.core
from servers.backend import Backend, UsageError
from servers.cli import main
from servers.core import guestbook as gb
from servers.drivers.blocking_backend import CONNECT_TIMEOUT, REPLY_SLACK
from servers.drivers.redis_connect import RETRY_S
from servers.redis_addr import RedisAddr
from servers.settings import Settings
from servers.stop import StopSignal

WIRE_FILE = Path(servers.core.__file__).parent / "wire.json"
OK_REASON = "OK"  # wire.json lists only error reasons; 200's is fixed by HTTP


def wire_texts(path: Path = WIRE_FILE) -> dict[str, Any]:
    """The keyword arguments of ``_cepoll.serve`` that carry response texts."""
    wire = json.loads(path.read_text(encoding="utf-8"))
    return {
        "server": wire["server"],
        "ok_reason": OK_REASON,
        "page_body": wire["page"]["body"].encode(),
        "page_content_type": wire["page"]["content_type"],
        "error_content_type": wire["error_content_type"],
        "allow": wire["allow"],
        "errors": {int(code): (spec["reason"], spec["body"].encode())
                   for code, spec in wire["errors"].items()},
    }


def _split(template: str, *fields: str) -> list[str]:
    """``template`` cut at each ``{field}`` in turn (each must be there exactly once)."""
    pieces, rest = [], template
    for field in fields:
        marker = "{" + field + "}"
        if rest.count(marker) != 1:
            raise ValueError(f"the guestbook template needs {marker} once: {template!r}")
        before, _, rest = rest.partition(marker)
        pieces.append(before)
    return [*pieces, rest]


def guestbook_texts(redis: RedisAddr, wait_ms: float, pool: int,
                    path: Path = WIRE_FILE) -> dict[str, Any]:
    """The ``guestbook`` argument of ``_cepoll.serve``: texts, limits and where Redis is."""
    text = json.loads(path.read_text(encoding="utf-8"))["guestbook"]
    head_a, head_b = _split(text["page_head"], "visits")
    entry_a, entry_b, entry_c = _split(text["entry"], "name", "message")
    call = gb.Guestbook(wait_ms).page_call()
    if redis.path:
        host, port = redis.path, -1
    else:
        family, _ = redis.socket_args()
        infos = socket.getaddrinfo(redis.host, redis.port, family, socket.SOCK_STREAM)
        host, port = infos[0][4][0], redis.port
    return {
        "page_call": call.commands,
        "page_replies": call.replies,
        "key": gb.ENTRIES_KEY,
        "kept": gb.KEPT,
        "max_name": gb.MAX_NAME,
        "max_message": gb.MAX_MESSAGE,
        "path": text["path"],
        "page_type": gb.PAGE_TYPE,
        "form_type": gb.FORM_TYPE,
        "reason_303": text["reasons"]["303"],
        "reason_503": text["reasons"]["503"],
        "head_a": head_a,
        "head_b": head_b,
        "entry_a": entry_a,
        "entry_b": entry_b,
        "entry_c": entry_c,
        "tail": text["page_tail"].format(max_name=gb.MAX_NAME, max_message=gb.MAX_MESSAGE),
        "see_other_body": text["see_other_body"],
        "unavailable_body": text["unavailable_body"],
        "bad_request_prefix": text["bad_request_prefix"],
        "reply_timeout": wait_ms / 1000 + REPLY_SLACK,
        "connect_timeout": CONNECT_TIMEOUT,
        "connect_retry": RETRY_S,
        "pool": pool,
        "redis_host": host,
        "redis_port": port,
    }


class CEpoll(Backend):
    """Native C epoll loop: one thread, level-triggered, non-blocking (echo and http).

    With ``--redis`` it serves the guestbook over a pool of non-blocking Redis
    connections in the same epoll (up to ``--backend-pool``)."""

    name = "c-epoll"
    workers_mode = "reuseport"
    guestbook = True
    backend_pool = True

    def validate(self, settings: Settings, options: argparse.Namespace) -> None:
        if settings.root is not None:
            raise UsageError("c-epoll serves no static files; --root is not supported")

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        import zoo_cepoll as _cepoll

        book = (guestbook_texts(settings.redis, settings.backend_wait_ms, settings.backend_pool)
                if settings.redis is not None else None)
        listener.setblocking(False)
        # C owns the descriptor from here on and closes it when it stops.
        fd = listener.detach()
        _cepoll.serve(
            fd,
            stop.fileno(),
            settings.proto,
            idle_timeout=settings.idle_timeout,
            header_timeout=settings.header_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_body_bytes=settings.max_body_bytes,
            write_high_water=settings.write_high_water,
            read_size=settings.read_size,
            shutdown_grace=settings.shutdown_grace,
            guestbook=book,
            **wire_texts(),
        )


BACKEND = CEpoll()

if __name__ == "__main__":
    main(BACKEND)
