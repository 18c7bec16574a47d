"""Echo: every byte received is sent back, in order, binary-safe."""

from __future__ import annotations

from servers.core.session import Session


class EchoSession(Session):
    """Echo state: nothing but the output queue and the idle clock."""

    def received(self, data: bytes | memoryview, now: float) -> None:
        self._last_activity = now
        if data and not self.closing:
            self._emit(bytes(data))

    def eof_received(self, now: float) -> None:
        # Half-close: everything received is still echoed, then the connection closes.
        self.closing = True
