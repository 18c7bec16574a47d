"""``--workers N``: N worker processes under a supervising parent.

``reuseport`` backends get a listener of their own in each worker (the kernel
spreads connections over SO_REUSEPORT sockets); ``shared`` backends (prefork)
inherit one listener. The parent reserves the port, waits until every worker
listens before printing the readiness line, replaces a worker that dies within
a fraction of a second, and on SIGINT/SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import time

from servers.backend import Backend
from servers.children import Children
from servers.listener import announce, open_listener
from servers.settings import Settings
from servers.stop import StopSignal

_READY_TIMEOUT = 15.0
# Workers get Settings.shutdown_grace (1 s) to finish; the parent must be gone within 2 s.
_STOP_TIMEOUT = 1.5


def _run_worker(backend: Backend, settings: Settings, port: int, shared: socket.socket | None,
                ready_fd: int, options: argparse.Namespace) -> None:
    """The body of a forked worker; never returns."""
    code = 0
    try:
        stop = StopSignal().install()
        listener = shared if shared is not None else open_listener(
            settings, reuseport=True, port=port)
        os.write(ready_fd, b"r")
        os.close(ready_fd)
        backend.serve(listener, settings, stop, options)
    except BaseException as exc:  # noqa: BLE001 - a worker reports and exits, never unwinds
        if not isinstance(exc, SystemExit | KeyboardInterrupt):
            print(f"{backend.name} worker {os.getpid()}: {exc!r}", file=sys.stderr)
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def supervise(backend: Backend, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
    shared_mode = backend.workers_mode == "shared"
    try:
        # In reuseport mode the parent's socket only reserves the port: bound, never listening,
        # so the kernel never hands it a connection.
        anchor = open_listener(settings, reuseport=not shared_mode, listen=shared_mode)
    except OSError as exc:
        print(f"{backend.name}: cannot listen on {settings.host}:{settings.port}: {exc}",
              file=sys.stderr)
        sys.exit(1)
    port = anchor.getsockname()[1]
    shared = anchor if shared_mode else None
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    children = Children()

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            _run_worker(backend, settings, port, shared, ready_w, options)
        children.add(pid)

    for _ in range(settings.workers):
        spawn()
    ready = 0
    deadline = time.monotonic() + _READY_TIMEOUT
    while ready < settings.workers and time.monotonic() < deadline and not stop.is_set():
        readable, _, _ = select.select([ready_r, stop], [], [], 0.2)
        if ready_r in readable:
            ready += len(os.read(ready_r, 64))
        children.reap()
    if ready < settings.workers and not stop.is_set():
        print(f"{backend.name}: only {ready} of {settings.workers} workers started",
              file=sys.stderr)
        children.stop(_STOP_TIMEOUT)
        sys.exit(1)
    announce(settings.host, port)
    while not stop.is_set():
        readable, _, _ = select.select([stop, ready_r], [], [], 0.1)
        if ready_r in readable:  # a replacement worker says it listens
            os.read(ready_r, 64)
        for _ in range(children.reap()):
            if not stop.is_set():
                spawn()
    children.stop(_STOP_TIMEOUT)
    anchor.close()

