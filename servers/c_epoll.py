"""c-epoll: the native user-space ceiling, a single-threaded C epoll loop.

The loop itself is the C extension ``servers._cepoll`` (built by setup.py from
``bench/native/cepoll.c``). Every response text it sends (page, content types,
reasons, error bodies, server name) is read here from ``servers/core/wire.json``
and handed to C, so c-epoll answers with the same bytes as the Python core.

Limits: no ``--root`` (static files). Request bodies (Content-Length or chunked) are
read and discarded, as in the Python core.
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


class CEpoll(Backend):
    """Native C epoll loop: one thread, level-triggered, non-blocking (echo and http)."""

    name = "c-epoll"
    workers_mode = "reuseport"

    def validate(self, settings: Settings, options: argparse.Namespace) -> None:
        if settings.root is not None:
            raise UsageError("c-epoll serves only the benchmark page; --root is not supported")

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        from servers import _cepoll

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
            **wire_texts(),
        )


BACKEND = CEpoll()

if __name__ == "__main__":
    main(BACKEND)
