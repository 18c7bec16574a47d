"""What every blocking model does around the blocking driver, written once.

A :class:`BlockingRunner` is one process's share of a blocking server (iterative,
threaded, threadpool, prefork, forking, gevent): the session factory, the set of
open connections that a graceful stop ends, and :meth:`BlockingRunner.serve`,
which runs one accepted socket through :func:`servers.drivers.blocking.serve_connection`
to its close. :func:`accept_until_stopped` is the accept loop of the models that
accept themselves. A backend keeps only its model: who accepts, who owns a
connection, and how long a worker keeps its Redis connection.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from servers.backend import Backend
from servers.core import Session, session_factory
from servers.drivers.accepting import AcceptBackoff
from servers.drivers.blocking import Bounds, Sender, serve_connection
from servers.drivers.blocking_backend import BlockingBackend
from servers.settings import Settings
from servers.stop import StopSignal


class BlockingModel(Backend):
    """A backend whose connections run through the blocking driver: it makes the
    guestbook's backend calls and sends files with sendfile(2) where its sockets can."""

    guestbook = True

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return True


class ConnectionSet:
    """The open connections of a process, so a graceful stop can end the idle ones.

    Stopping shuts down the read side of every connection: a worker blocked in
    recv sees end-of-file and finishes; one in the middle of a response sends it
    first. New connections added after the stop are shut down at once.

    No lock: set operations and the snapshot are atomic under the GIL, and
    :meth:`stop_all` may run inside a signal handler that interrupted :meth:`add`.
    """

    def __init__(self) -> None:
        self._socks: set[socket.socket] = set()
        self._stopped = False

    def add(self, sock: socket.socket) -> None:
        self._socks.add(sock)
        if self._stopped:
            _shutdown_read(sock)

    def discard(self, sock: socket.socket) -> None:
        self._socks.discard(sock)

    def __len__(self) -> int:
        return len(self._socks)

    def stop_all(self) -> None:
        self._stopped = True
        for sock in list(self._socks):
            _shutdown_read(sock)


def _shutdown_read(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


def accept_until_stopped(listener: socket.socket, stop: StopSignal,
                         handle: Callable[[socket.socket], None]) -> None:
    """Accept connections and pass each, blocking, to ``handle`` until stop is set."""
    listener.setblocking(False)
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(stop, select.POLLIN)
    backoff = AcceptBackoff()
    while not stop.is_set():
        ready = poller.poll()
        if stop.is_set():
            break
        if any(fd == stop.fileno() for fd, _ in ready):
            # Woken by another signal through the wakeup fd (SIGCHLD in forking): drain
            # it, or poll would report it forever. A real stop writes its own byte.
            _drain(stop.fileno())
            continue
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        except OSError as exc:
            pause = backoff.failed(exc)
            if pause is None:
                raise
            stop.wait(pause)
            continue
        backoff.succeeded()
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handle(sock)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 256):
            pass
    except (BlockingIOError, InterruptedError):
        pass


class BlockingRunner:
    """Runs accepted sockets through the blocking driver, for one process.

    When ``stop`` is set, every open connection's read side is shut down (an idle
    worker sees end-of-file, a busy one finishes its response first). With
    ``sends_heed_stop`` a send blocked on a peer that does not read also gives up
    once the server has been stopping for the shutdown grace: for the models whose
    workers must end by themselves (iterative, the thread pools). The others are
    ended from outside after the grace (threads left to the process's exit,
    greenlets killed, children killed), and their blocked sends wake only as often as
    the idle timeout asks, which matters with thousands of them.
    """

    __slots__ = ("settings", "new_session", "connections", "_send_stop", "_bounds")

    def __init__(self, settings: Settings, stop: StopSignal, *, sends_heed_stop: bool,
                 new_session: Callable[[float], Session] | None = None,
                 bounds: Callable[[socket.socket, Sender], Bounds] | None = None) -> None:
        self.settings = settings
        self.new_session = new_session if new_session is not None else session_factory(settings)
        self.connections = ConnectionSet()
        stop.add_callback(self.connections.stop_all)
        self._send_stop = stop if sends_heed_stop else None
        self._bounds = bounds  # what bounds a connection's waits (the driver's default: None)

    def serve(self, sock: socket.socket, backend: BlockingBackend | None = None) -> None:
        """Serve ``sock`` to its end and close it. ``backend`` is the worker's Redis
        connection (:meth:`worker_backend`); without one, a connection that makes a
        backend call opens its own, with the socket class of ``sock``, and closes it."""
        connections = self.connections
        connections.add(sock)
        try:
            serve_connection(sock, self.new_session, self.settings, stop=self._send_stop,
                             backend=backend, bounds=self._bounds)
        finally:
            connections.discard(sock)

    @contextmanager
    def worker_backend(self) -> Iterator[BlockingBackend | None]:
        """A Redis connection for a worker that serves one connection after another
        (None without ``--redis``), closed when the worker ends."""
        backend = BlockingBackend.for_settings(self.settings)
        try:
            yield backend
        finally:
            if backend is not None:
                backend.close()
