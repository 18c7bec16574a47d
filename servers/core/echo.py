"""Echo: every byte received is sent back, in order, binary-safe."""

from __future__ import annotations

from servers.core.session import Session


class EchoSession(Session):
    """Echo state: nothing but the output queue and the idle clock.

    One read is echoed whole (a read is at most ``read_size``), so echo never
    holds input; the driver stops reading while the echoed bytes are over the mark.
    A half-close still gets everything received echoed, then the connection closes.
    """

    def _feed(self, data: memoryview, now: float) -> int:
        self._emit(bytes(data))
        return len(data)
