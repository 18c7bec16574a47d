"""gevent: ``gevent.server.StreamServer``, a greenlet per connection, no monkey-patching.

The blocking driver runs unchanged on gevent's cooperative sockets (what
StreamServer hands each handler), so blocking calls switch greenlets instead
of threads; one timer per connection bounds its waits
(:mod:`servers.drivers.greenlet_bounds`). Nothing is monkey-patched, here or on
import: gevent is imported only inside :meth:`Gevent.serve`, so the hub is created
in the process that serves (after the fork, under ``--workers``). gevent's socket
``sendfile`` is cooperative read+send, not sendfile(2). Running out of descriptors
at accept is handled by :class:`servers.drivers.accepting.AcceptBackoff` (one log
line per episode, a pause) instead of StreamServer's traceback per attempt.
"""

from __future__ import annotations

import argparse
import socket

from servers.cli import main
from servers.drivers.accepting import AcceptBackoff
from servers.drivers.blocking_runner import BlockingModel, BlockingRunner
from servers.drivers.greenlet_bounds import GreenletBounds
from servers.settings import Settings
from servers.stop import StopSignal


class Gevent(BlockingModel):
    """gevent StreamServer: greenlets on a libev hub, the blocking driver in each."""

    name = "gevent"

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        return False  # gevent's sendfile is read+send

    def serve(self, listener: socket.socket, settings: Settings, stop: StopSignal,
              options: argparse.Namespace) -> None:
        import gevent.pool
        import gevent.server
        import gevent.socket

        # A greenlet per connection, with its own (cooperative) Redis connection if its
        # client calls one; greenlets left after the grace are killed.
        runner = BlockingRunner(settings, stop, sends_heed_stop=False, bounds=GreenletBounds)

        def handle(sock: socket.socket, address: object) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            runner.serve(sock)

        listener.setblocking(False)  # StreamServer never accepts on a blocking listener
        # An unbounded pool, only so that stop() can wait for (and then kill) the handlers.
        pool = gevent.pool.Pool()
        server = _server_class(gevent.server.StreamServer)(listener, handle, spawn=pool)
        server.start()
        try:
            gevent.socket.wait_read(stop.fileno())
        finally:
            server.close()  # stop accepting; the stop already ended idle connections
            pool.join(timeout=settings.shutdown_grace)
            # What is still running after the grace is abandoned, not waited for (as
            # StreamServer.stop would, up to one more second): the process exits now.
            pool.kill(block=False)


def _server_class(base: type) -> type:
    """``StreamServer`` whose accept pauses quietly when descriptors run out."""

    class QuietStreamServer(base):  # type: ignore[valid-type, misc]
        backoff = AcceptBackoff()

        def do_read(self) -> object:
            try:
                args = super().do_read()
            except OSError as exc:
                pause = self.backoff.failed(exc)
                if pause is None:
                    raise
                self.stop_accepting()
                self.retry = self.loop.timer(pause)
                self.retry.start(self._resume)
                return None  # StreamServer stops this round of accepting
            if args:
                self.backoff.succeeded()
            return args

        def _resume(self) -> None:
            if not self.closed:
                self.start_accepting()

    return QuietStreamServer


if __name__ == "__main__":
    main(Gevent())
