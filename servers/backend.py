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
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from servers.settings import Settings
    from servers.stop import StopSignal


class UsageError(Exception):
    """A flag combination this backend cannot honour; reported like a bad flag (exit 2)."""


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
        """Run once in the launching process before any worker starts (probes, limits)."""

    def serve(
        self,
        listener: socket.socket,
        settings: Settings,
        stop: StopSignal,
        options: argparse.Namespace,
    ) -> None:
        """Serve until ``stop`` is set, then finish in-flight work and return."""
        raise NotImplementedError
