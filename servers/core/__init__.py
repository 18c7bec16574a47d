"""The sans-IO protocol core: echo and HTTP/1.1 as state machines.

Nothing here touches a socket, a thread or an event loop. A driver feeds a
:class:`Session` the bytes it read and the current monotonic time; the session
answers with writes (``bytes`` or a :class:`FileSlice`) and says when the
connection should close. Every backend uses this package, so every server
answers the same request with the same bytes.
"""

from servers.core.session import FileSlice, Session, Write, session_factory

__all__ = ["FileSlice", "Session", "Write", "session_factory"]
