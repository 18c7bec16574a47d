"""Echo: every byte received is sent back, in order, binary-safe."""

from __future__ import annotations

from servers.core.session import Session


class EchoSession(Session):
    """Echo state: nothing but the output queue and the idle clock.

    One read is echoed whole (a read is at most ``read_size``), so echo never
    holds input; the driver stops reading while the echoed bytes are over the mark.
    A half-close still gets everything received echoed, then the connection closes.
    """

    def received(self, data: bytes | memoryview, now: float) -> None:
        """As :meth:`Session.received`, without its general path: echo never holds input
        and never waits for a backend, so what was read goes straight to the output."""
        self._last_activity = now
        if self._closing or not data:
            return
        echoed = bytes(data)
        self._out.append(echoed)
        self._unsent += len(echoed)

    def _feed(self, data: memoryview, now: float) -> int:
        self._emit(bytes(data))
        return len(data)
