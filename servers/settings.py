"""The one settings object every backend receives: limits, timeouts, addresses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from servers.redis_addr import RedisAddr

KIB = 1024
MIB = 1024 * KIB

# How late a timer may fire and still be left as it is, rather than set again: a share
# of the timeout plus a constant (the blocking driver's kernel timeouts, trio's scope
# deadline). Setting a timer costs more than an echo; 2% + 2 ms is still a tight bound.
TIMER_SLACK_SHARE = 0.02
TIMER_SLACK_S = 0.002


@dataclass(frozen=True)
class Settings:
    """What a server needs to know, whatever its concurrency model.

    Times are in seconds, sizes in bytes.
    """

    proto: str = "http"
    host: str = "127.0.0.1"
    port: int = 0
    root: Path | None = None
    workers: int = 1
    idle_timeout: float = 30.0
    header_timeout: float = 10.0
    max_header_bytes: int = 8 * KIB
    max_body_bytes: int = 1 * MIB
    write_high_water: int = 256 * KIB
    backlog: int = 1024
    read_size: int = 64 * KIB
    shutdown_grace: float = 1.0
    # After the last response of a connection we close, the peer may still be sending;
    # closing with unread input resets the connection and can destroy that response.
    # So every driver half-closes and drains the peer for at most this long and this much.
    linger_seconds: float = 1.0
    linger_bytes: int = 1 * MIB
    # The guestbook (GET/POST /guestbook) needs a Redis: None serves no guestbook (404).
    redis: RedisAddr | None = None
    # Each guestbook GET first waits this long in Redis (BLPOP on an empty key).
    backend_wait_ms: float = 0.0
    # Event-loop models: at most this many Redis connections per loop, each carrying one
    # call at a time (a BLPOP holds its connection); calls beyond wait for a free one.
    # Blocking models have one per worker instead.
    backend_pool: int = 1024
    # Files by sendfile(2) where the model can, else read+write (--sendfile off).
    sendfile: bool = True
