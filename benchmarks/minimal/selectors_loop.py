"""Minimal readiness-loop echo: one ``selectors`` loop (epoll here), level-triggered."""

import selectors
import socket

from common import listen

listener, _ = listen()
listener.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        sock = key.fileobj
        if sock is listener:
            conn, _ = listener.accept()
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(conn, selectors.EVENT_READ)
            continue
        try:
            data = sock.recv(65536)
        except ConnectionError:
            data = b""
        if data:
            sock.send(data)  # 64-byte ping-pong: the socket always takes it whole
        else:
            sel.unregister(sock)
            sock.close()
