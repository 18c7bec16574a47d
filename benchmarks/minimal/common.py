"""What every minimal server shares: the harness's flags, a listener, the readiness line.

The minimal servers are the yardstick of ``benchmarks/test_overhead.py``: each is its
model and nothing else (no core, no timeouts, no settings), started by the harness
like any server (``python benchmarks/minimal/X.py --proto echo --port 0``). SIGTERM
ends one at once with status 0: there is nothing in flight worth finishing.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket


def parse(extra: dict[str, list[str]] | None = None) -> argparse.Namespace:
    """``--proto echo --port N``, plus ``extra`` choice flags; a bad flag exits 2."""
    parser = argparse.ArgumentParser(description="a minimal echo server")
    parser.add_argument("--proto", choices=["echo"], required=True)
    parser.add_argument("--port", type=int, default=0)
    for flag, choices in (extra or {}).items():
        parser.add_argument(flag, choices=choices, default=choices[0])
    return parser.parse_args()


def listen(extra: dict[str, list[str]] | None = None) -> tuple[socket.socket, argparse.Namespace]:
    """Parse the flags, listen on loopback, print the readiness line."""
    args = parse(extra)
    sock = socket.create_server(("127.0.0.1", args.port), backlog=1024)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    return sock, args
