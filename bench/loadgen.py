"""The native load generator: validation around ``bench._loadgen`` and its CLI.

``run(...)`` returns one dict (the schema below); ``python -m bench.loadgen``
prints it for humans or, with ``--json``, as one JSON object on stdout::

    {"workload", "connections", "threads", "duration_s", "requests",
     "requests_per_s", "bytes_sent", "bytes_received",
     "latency_us": {"p50", "p90", "p99", "p999", "max", "mean"},
     "errors": {"refused", "reset", "timeout", "short", "wrong", "status", "other"},
     "errors_total", "idle_open", "client_cpu_s", "client_cpu_util",
     "rate", "open_loop"}

Exit status: 0 whenever the test ran, errors included (errors are data: a
server that refuses every connection gives ``requests == 0`` and
``errors.refused > 0``); 1 when it could not run at all (unresolvable target,
no resources); 2 for bad flags; 130 when interrupted (SIGINT stops the run within
about 10 ms: the native run checks for signals while it waits for its threads).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from servers.argtypes import non_negative_float, non_negative_int, positive_float, positive_int

WORKLOADS = ("echo", "echo-connect", "http", "http-connect", "http-pipeline", "file",
             "guestbook", "guestbook-post")
APP_WORKLOADS = ("file", "guestbook", "guestbook-post")  # need a --root or a Redis
GUESTBOOK_PATH = "/guestbook"
GUESTBOOK_MARKER = "<!-- tcp-zoo guestbook -->"  # servers.core.guestbook.PAGE_MARKER
ERROR_KINDS = ("refused", "reset", "timeout", "short", "wrong", "status", "other")
RESULT_KEYS = (
    "workload", "connections", "threads", "duration_s", "requests", "requests_per_s",
    "bytes_sent", "bytes_received", "latency_us", "errors", "errors_total", "idle_open",
    "client_cpu_s", "client_cpu_util", "rate", "open_loop",
)
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max", "mean")
DEFAULT_DURATION = 10.0
LIMITED_DURATION_CAP = 60.0  # with --requests and no --duration: the run's time bound


def default_threads() -> int:
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve(host: str, port: int) -> str:
    """A numeric address for ``host`` (IPv4 preferred)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def run(
    host: str,
    port: int,
    workload: str = "http",
    connections: int = 10,
    duration: float | None = None,
    *,
    threads: int | None = None,
    rate: float | None = None,
    size: int = 64,
    pipeline: int = 1,
    idle: int = 0,
    warmup: float = 0.0,
    requests: int | None = None,
    timeout: float = 5.0,
    path: str | None = None,
    post_every: int = 20,
) -> dict[str, Any]:
    """Run one load test and return the result dict (see the module docstring).

    ``rate`` (total requests/s) selects the open loop; None or 0 is the closed
    loop. ``requests`` stops the run after exactly that many completed requests
    (the duration, default 60 s then, stays an upper bound). ``file`` GETs
    ``path`` (default: the generated file of ``size`` bytes, bench.files) and checks
    its length and sampled content; ``guestbook`` GETs /guestbook and checks for
    the page's marker; ``guestbook-post`` also POSTs the form every ``post_every``
    requests of a connection and expects 303. Raises ValueError for invalid
    parameters and OSError when the target cannot be resolved.
    """
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}")
    if not 0 < port < 65536:
        raise ValueError("port must be 1..65535")
    if connections < 1:
        raise ValueError("connections must be >= 1")
    if duration is None:
        duration = LIMITED_DURATION_CAP if requests else DEFAULT_DURATION
    if duration <= 0:
        raise ValueError("duration must be > 0")
    if threads is None:
        threads = default_threads()
    if threads < 1:
        raise ValueError("threads must be >= 1")
    if rate is not None and rate < 0:
        raise ValueError("rate must be >= 0")
    if size < 1:
        raise ValueError("size must be >= 1")
    if pipeline < 1:
        raise ValueError("pipeline must be >= 1")
    if idle < 0:
        raise ValueError("idle must be >= 0")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    if requests is not None and requests < 1:
        raise ValueError("requests must be >= 1")
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    if post_every < 1:
        raise ValueError("post_every must be >= 1")
    app: dict[str, Any] = {"post_every": post_every}
    if workload == "file":
        from bench.files import url_path

        app.update(path=path or url_path(size), expect_length=size)
    elif workload in ("guestbook", "guestbook-post"):
        app.update(path=path or GUESTBOOK_PATH, marker=GUESTBOOK_MARKER)
    elif path is not None:
        app.update(path=path)
    if not app.get("path", "/").startswith("/"):
        raise ValueError("path must start with /")
    from bench import _loadgen

    address = resolve(host, port)
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    result: dict[str, Any] = _loadgen.run(
        address, port, workload, connections, float(duration),
        threads=threads, rate=float(rate or 0.0), size=size, pipeline=pipeline, idle=idle,
        warmup=float(warmup), requests=requests or 0, timeout=float(timeout),
        host_header=host_header, **app,
    )
    result.pop("wall_s", None)
    result["rate"] = float(rate) if rate else None
    result["open_loop"] = bool(rate)
    return {key: result[key] for key in RESULT_KEYS}


def format_human(result: dict[str, Any]) -> str:
    """A few lines: throughput, latency percentiles, errors."""
    lat = result["latency_us"]
    loop = f"open loop at {result['rate']:.0f} req/s" if result["open_loop"] else "closed loop"
    errors = ", ".join(f"{k} {v}" for k, v in result["errors"].items() if v) or "none"
    lines = [
        f"{result['workload']}: {result['connections']} connections, "
        f"{result['threads']} threads, {loop}, {result['duration_s']:.2f} s",
        f"  requests   {result['requests']}  ({result['requests_per_s']:.0f} req/s)",
        f"  latency us p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  "
        f"p99.9 {lat['p999']}  max {lat['max']}  mean {lat['mean']:.1f}",
        f"  errors     {result['errors_total']} ({errors})",
        f"  bytes      sent {result['bytes_sent']}  received {result['bytes_received']}",
        f"  client cpu {result['client_cpu_s']:.2f} s ({100 * result['client_cpu_util']:.0f}%"
        " of its threads)",
    ]
    if result["idle_open"]:
        lines.append(f"  idle connections still open: {result['idle_open']}")
    return "\n".join(lines)


def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Native epoll load generator for echo and HTTP servers.",
    )
    parser.add_argument("--target", type=_target, required=True, help="HOST:PORT")
    parser.add_argument("--workload", choices=WORKLOADS, default="http")
    parser.add_argument("-c", "--connections", type=positive_int, default=10)
    parser.add_argument("-d", "--duration", type=positive_float, default=None,
                        help=f"seconds (default {DEFAULT_DURATION:g}; with --requests, "
                             f"an upper bound of {LIMITED_DURATION_CAP:g})")
    parser.add_argument("--rate", type=positive_float, default=None,
                        help="open loop: total requests/s (latency from the due time)")
    parser.add_argument("--size", type=positive_int, default=64,
                        help="echo payload bytes; file: the generated file's size")
    parser.add_argument("--path", default=None,
                        help="request target (default /, file: /file-SIZE.bin, "
                             "guestbook: /guestbook)")
    parser.add_argument("--post-every", type=positive_int, default=20,
                        help="guestbook-post: one POST every N requests of a connection")
    parser.add_argument("--pipeline", type=positive_int, default=1,
                        help="http-pipeline depth")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="client threads (default: CPUs in the affinity mask)")
    parser.add_argument("--idle", type=non_negative_int, default=0,
                        help="extra silent connections held open")
    parser.add_argument("--warmup", type=non_negative_float, default=0.0,
                        help="seconds run first and not measured")
    parser.add_argument("--requests", type=positive_int, default=None,
                        help="stop after exactly this many completed requests")
    parser.add_argument("--timeout", type=positive_float, default=5.0,
                        help="per-request timeout, s")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    options = build_parser().parse_args(argv)
    host, port = options.target
    try:
        result = run(
            host, port, options.workload, options.connections, options.duration,
            threads=options.threads, rate=options.rate, size=options.size,
            pipeline=options.pipeline, idle=options.idle, warmup=options.warmup,
            requests=options.requests, timeout=options.timeout, path=options.path,
            post_every=options.post_every,
        )
    except (OSError, ValueError) as exc:
        print(f"loadgen: cannot run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return 130
    if options.json:
        print(json.dumps(result))
    else:
        print(format_human(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
