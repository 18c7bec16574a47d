"""The one command line every backend shares, and the launch sequence.

``main(backend)`` parses the flags, opens the listener, prints
``listening on HOST:PORT``, routes SIGINT/SIGTERM to a graceful stop and hands
over to the backend (or to the worker supervisor for ``--workers N``).
"""

from __future__ import annotations

import argparse
import resource
import sys

from servers.argtypes import (
    directory,
    non_negative_float,
    port,
    positive_float,
    positive_int,
    redis_addr,
)
from servers.backend import Backend, Unavailable, UsageError, exit_unavailable
from servers.listener import announce, open_listener
from servers.settings import Settings
from servers.stop import StopSignal


def build_parser(backend: Backend) -> argparse.ArgumentParser:
    defaults = Settings()
    module = type(backend).__module__
    if module == "__main__":  # started as python -m servers.<name>: report that name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=(type(backend).__doc__ or backend.name).strip().splitlines()[0],
    )
    parser.add_argument("--proto", choices=("echo", "http"), default=defaults.proto,
                        help="protocol to serve (default: %(default)s)")
    parser.add_argument("--host", default=defaults.host, help="address (default: %(default)s)")
    parser.add_argument("--port", type=port, default=defaults.port,
                        help="port; 0 takes a free one (default: %(default)s)")
    parser.add_argument("--root", type=directory, default=None,
                        help="serve the files under this directory (http only)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"worker processes (default: {backend.default_workers})")
    parser.add_argument("--idle-timeout", type=positive_float, default=defaults.idle_timeout,
                        help="close a connection silent this long, s (default: %(default)s)")
    parser.add_argument("--header-timeout", type=positive_float,
                        default=defaults.header_timeout,
                        help="close a client whose request head is not complete this long "
                             "after it began, s (default: %(default)s)")
    parser.add_argument("--max-header-bytes", type=positive_int,
                        default=defaults.max_header_bytes,
                        help="larger request heads get 431 (default: %(default)s)")
    parser.add_argument("--max-body-bytes", type=positive_int, default=defaults.max_body_bytes,
                        help="larger request bodies get 413 (default: %(default)s)")
    parser.add_argument("--write-high-water", type=positive_int,
                        default=defaults.write_high_water,
                        help="stop reading from a peer with this much unsent output, bytes "
                             "(default: %(default)s)")
    parser.add_argument("--backlog", type=positive_int, default=defaults.backlog,
                        help="listen backlog (default: %(default)s)")
    parser.add_argument("--redis", type=redis_addr, default=None, metavar="ADDR",
                        help="serve the guestbook (GET/POST /guestbook) on the Redis at "
                             "HOST:PORT or unix:PATH (http only; default: no guestbook)")
    parser.add_argument("--backend-wait-ms", type=non_negative_float,
                        default=defaults.backend_wait_ms, metavar="W",
                        help="each guestbook GET first waits W ms in Redis (BLPOP on an "
                             "empty key; default: %(default)s)")
    parser.add_argument("--sendfile", choices=("on", "off"), default=None,
                        help="files by sendfile(2) (on: the default where the model can) or "
                             "by read+write (off)")
    parser.add_argument("--backend-pool", type=positive_int, default=None, metavar="N",
                        help="event-loop models: at most N Redis connections per loop, one "
                             f"call on each at a time (default: {defaults.backend_pool}); "
                             "blocking models use one per worker")
    backend.add_arguments(parser)
    return parser


def settings_from(options: argparse.Namespace, backend: Backend) -> Settings:
    if options.root is not None and options.proto != "http":
        raise UsageError("--root needs --proto http")
    if options.redis is not None and options.proto != "http":
        raise UsageError("--redis needs --proto http")
    if options.redis is not None and not backend.guestbook:
        raise UsageError(f"{backend.name} has no guestbook: --redis is not supported")
    if options.backend_pool is not None and not backend.backend_pool:
        raise UsageError(f"{backend.name} keeps one Redis connection per worker: "
                         "--backend-pool is not supported")
    if options.sendfile == "on" and not backend.can_sendfile(options):
        raise UsageError(f"{backend.name} sends files by read+write: --sendfile on is not "
                         "possible")
    if options.backend_pool is not None and options.redis is None:
        raise UsageError("--backend-pool needs --redis")
    if options.backend_wait_ms and options.redis is None:
        raise UsageError("--backend-wait-ms needs --redis (the wait happens in Redis)")
    workers = options.workers if options.workers is not None else backend.default_workers
    if workers > 1 and backend.workers_mode is None:
        raise UsageError(f"{backend.name} runs one process; --workers {workers} is not possible")
    return Settings(
        proto=options.proto,
        host=options.host,
        port=options.port,
        root=options.root,
        workers=workers,
        idle_timeout=options.idle_timeout,
        header_timeout=options.header_timeout,
        max_header_bytes=options.max_header_bytes,
        max_body_bytes=options.max_body_bytes,
        write_high_water=options.write_high_water,
        backlog=options.backlog,
        redis=options.redis,
        backend_wait_ms=options.backend_wait_ms,
        backend_pool=options.backend_pool or Settings.backend_pool,
        sendfile=options.sendfile != "off" and backend.can_sendfile(options),
    )


def raise_descriptor_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (thousands of clients need it);
    return the soft limit now in force. Shared by the servers, the harness and the tests."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def main(backend: Backend, argv: list[str] | None = None) -> None:
    """Parse, listen, announce, serve until SIGINT/SIGTERM, exit 0."""
    parser = build_parser(backend)
    options = parser.parse_args(argv)
    raise_descriptor_limit()
    try:
        settings = settings_from(options, backend)
        backend.validate(settings, options)
    except UsageError as exc:
        parser.error(str(exc))
    try:
        backend.prepare(settings, options)
    except Unavailable as exc:
        exit_unavailable(f"{backend.name}: {exc}")
    except OSError as exc:
        print(f"{backend.name}: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)
    stop = StopSignal().install()
    if settings.workers > 1:
        from servers.workers import supervise

        supervise(backend, settings, stop, options)
    else:
        try:
            listener = open_listener(settings)
        except OSError as exc:
            print(f"{backend.name}: cannot listen on {settings.host}:{settings.port}: {exc}",
                  file=sys.stderr)
            sys.exit(1)
        announce(settings.host, listener.getsockname()[1])
        try:
            backend.serve(listener, settings, stop, options)
        finally:
            listener.close()
    sys.stdout.flush()
