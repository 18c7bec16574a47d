"""The narrow interface between the launcher and a concurrency model.

A backend module defines one :class:`Backend` subclass and ends with
``if __name__ == "__main__": main(Backend())``. The launcher (:mod:`servers.cli`)
owns argument parsing, the listening socket, signals and ``--workers``; the
backend owns only what makes its model the model: who accepts and who runs a
connection.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import TYPE_CHECKING, ClassVar, NoReturn

if TYPE_CHECKING:
    from servers.settings import Settings
    from servers.stop import StopSignal


class UsageError(Exception):
    """A flag combination this backend cannot honour; reported like a bad flag (exit 2)."""


EXIT_UNAVAILABLE = 3
"""Exit status of a server that cannot run on this machine (see :class:`Unavailable`)."""

UNAVAILABLE_PREFIX = "skipped: "


class Unavailable(Exception):
    """This server cannot run on this machine: a kernel feature, a binding or a privilege
    is missing. Not a failure: the launcher prints ``skipped: REASON`` on stderr and exits
    with :data:`EXIT_UNAVAILABLE`, and the harness and the tests report it as skipped."""


def exit_unavailable(reason: str) -> NoReturn:
    """Announce that this server cannot run here, and exit (the one way to say so)."""
    print(f"{UNAVAILABLE_PREFIX}{reason}", file=sys.stderr, flush=True)
    sys.exit(EXIT_UNAVAILABLE)


def unavailable_reason(returncode: int | None, stderr: str) -> str | None:
    """The reason a server process gave for not running here, or None if it did not
    exit that way (for whoever started it: the harness, the tests)."""
    if returncode != EXIT_UNAVAILABLE:
        return None
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(UNAVAILABLE_PREFIX):
            return line[len(UNAVAILABLE_PREFIX):].strip()
    return lines[-1] if lines else "no reason given"


class Backend:
    """Base class: override :meth:`serve`, and the class attributes where they differ.

    ``workers_mode`` says what ``--workers N`` means for this model: ``"reuseport"``
    (N processes, each with its own SO_REUSEPORT listener), ``"shared"`` (N
    processes accepting on one inherited listener), or None (the model has no
    workers; N > 1 is a usage error).
    """

    name: ClassVar[str] = ""
    workers_mode: ClassVar[str | None] = "reuseport"
    default_workers: ClassVar[int] = 1
    # Whether this model's driver makes the guestbook's backend calls (``--redis``).
    guestbook: ClassVar[bool] = False
    # Whether its Redis connections are a pool of --backend-pool N per event loop (else
    # one per worker, and --backend-pool is a usage error).
    backend_pool: ClassVar[bool] = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this backend's own flags."""

    def can_sendfile(self, options: argparse.Namespace) -> bool:
        """Whether this model sends files with sendfile(2) (``--sendfile on``); those
        that cannot always read and write, and refuse ``--sendfile on``."""
        return False

    def validate(self, settings: Settings, options: argparse.Namespace) -> None:
        """Raise :class:`UsageError` for settings this backend cannot honour."""

    def prepare(self, settings: Settings, options: argparse.Namespace) -> None:
        """Run once in the launching process before any worker starts (probes, limits).
        Raise :class:`Unavailable` when this machine cannot run the model."""

    def serve(
        self,
        listener: socket.socket,
        settings: Settings,
        stop: StopSignal,
        options: argparse.Namespace,
    ) -> None:
        """Serve until ``stop`` is set, then finish in-flight work and return."""
        raise NotImplementedError
