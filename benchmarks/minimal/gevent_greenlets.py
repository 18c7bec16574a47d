"""Minimal gevent echo: a ``StreamServer``, a greenlet per connection, recv and sendall."""

import os
import signal

import gevent
from common import listen
from gevent.server import StreamServer


def echo(conn, _address) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


listener, _ = listen()
listener.setblocking(False)  # StreamServer never accepts on a blocking listener
gevent.signal_handler(signal.SIGTERM, os._exit, 0)  # the hub runs, not the main thread
StreamServer(listener, echo).serve_forever()
