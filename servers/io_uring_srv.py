"""io_uring: a completion loop, not a readiness loop, on the ``uring-api`` binding.

This file is the model's backend: the start-up probe of the kernel and the
binding, the ``--recv`` flag, and which receive mode the loop runs. The loop
itself (accept, recv, send and file reads submitted to one ring and handled on
completion, the guestbook's Redis I/O on the same ring) is
:class:`servers.drivers.io_uring.UringLoop`. Two receive modes (``--recv``):

- ``single``: a one-shot recv into a buffer the connection owns, re-armed after
  each completion. Memory is a buffer per connection, armed or not.
- ``multishot``: one multishot recv per connection selecting buffers from a
  shared provided-buffer ring. Memory is the shared ring, whatever the number of
  connections. The default: on this machine it cost about 10-15% less CPU per
  echo round trip than ``single`` at 50 and 1,000 connections. A kernel without
  it runs ``single``, saying so once on stderr.

Files are read+send on the ring (the binding exposes no splice, so there is no
sendfile(2) and ``sendfile`` is false).

The kernel is probed at start (:meth:`IoUring.prepare`): the binding must load
its native part, a ring must open and an operation complete, else the server
says why in one line and exits as unavailable here
(:class:`servers.backend.Unavailable`).
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from servers.backend import Backend, Unavailable, UsageError
from servers.cli import main
from servers.drivers.io_uring import UringLoop
from servers.settings import Settings
from servers.stop import StopSignal


def load_binding() -> Any:
    """Import ``uring_api`` or raise :class:`Unavailable` saying why io_uring cannot be used."""
    try:
        import uring_api
    except ImportError as exc:
        raise Unavailable(f"io_uring binding not installed (pip install uring-api): {exc}") \
            from None
    missing = getattr(uring_api, "_native_import_error", None)
    if missing is not None:
        raise Unavailable(f"uring-api has no native part ({missing}); install the wheel with "
                      "--only-binary uring-api")
    return uring_api


def probe() -> dict[str, bool]:
    """Open a ring, complete one recv on a socket pair, report optional features.

    Raises :class:`Unavailable` with a one-line reason when io_uring is unusable.
    """
    uring = load_binding()
    features = uring.probe()
    if not features.get("available"):
        raise Unavailable("io_uring unavailable: the kernel refused to create a ring "
                          "(disabled by sysctl kernel.io_uring_disabled, seccomp or too old)")
    left, right = socket.socketpair()
    try:
        with uring.Ring(entries=4) as ring:
            buf = bytearray(1)
            ring.prepare_recv(left.fileno(), buf, 0, "probe")
            ring.submit()
            right.send(b"!")
            done = ring.wait(2.0) or []
            if not done or done[0].res != 1 or buf != b"!":
                raise Unavailable("io_uring unavailable: a probe recv did not complete")
    except OSError as exc:
        raise Unavailable(f"io_uring unavailable: {exc}") from None
    finally:
        left.close()
        right.close()
    return {
        "multishot_accept": bool(features.get("IORING_ACCEPT_MULTISHOT")),
        "multishot_recv": bool(features.get("IORING_RECV_MULTISHOT"))
        and bool(features.get("IORING_BUF_RING")),
    }


class IoUring(Backend):
    """Completion-based: accept, recv and send submitted to io_uring."""

    name = "io_uring"
    guestbook = True  # the Redis I/O on the same ring
    backend_pool = True  # up to --backend-pool Redis connections per loop

    def __init__(self) -> None:
        self.features: dict[str, bool] = {}
        self.multishot_recv = False  # the receive mode resolved by prepare

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--recv", choices=("single", "multishot"), default="multishot",
                            help="single-shot recv into per-connection buffers, or one "
                                 "multishot recv per connection on a provided-buffer ring "
                                 "(default: %(default)s, the cheaper per request here)")

    def validate(self, settings: Settings, options: argparse.Namespace) -> None:
        if options.recv not in ("single", "multishot"):
            raise UsageError(f"--recv {options.recv}: expected single or multishot")

    def prepare(self, settings: Settings, options: argparse.Namespace) -> None:
        self.features = probe()
        self.multishot_recv = options.recv == "multishot" and self.features["multishot_recv"]
        if options.recv == "multishot" and not self.multishot_recv:
            print("io_uring: this kernel has no multishot recv with provided buffers; "
                  "using single-shot recv", file=sys.stderr, flush=True)

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        UringLoop(load_binding(), listener, settings, stop,
                  multishot_recv=self.multishot_recv,
                  multishot_accept=self.features.get("multishot_accept", False)).run()


if __name__ == "__main__":
    main(IoUring())
