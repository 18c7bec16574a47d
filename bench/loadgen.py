"""The native load generator: validation around ``zoo_loadgen`` and its CLI.

``run(...)`` returns one dict (the schema below); ``python -m bench.loadgen``
prints it for humans or, with ``--json``, as one JSON object on stdout::

    {"workload", "connections", "threads", "duration_s", "requests",
     "requests_per_s", "bytes_sent", "bytes_received",
     "latency_us": {"p50", "p90", "p99", "p999", "max", "mean"},
     "errors": {"refused", "reset", "timeout", "short", "wrong", "status", "other"},
     "errors_total", "idle_open", "client_cpu_s", "client_cpu_util",
     "rate", "open_loop", "histogram": {"buckets": [[HIGH_US, COUNT], ...], "sum_ns",
     "max_us"}, "start_late_s", "arrivals", "seed",
     "halves": {"duration_s": [A, B], "requests": [N1, N2], "p99_us": [P1, P2]}}

``histogram`` holds the raw latency buckets (each named by the highest value it
holds, in microseconds), so results of several load generators merge exactly
(:func:`merge`); ``start_late_s`` is how late the clock started after ``--start-at``.
``halves`` splits the measured window in two (answers by completion time), for the
harness's stationarity check.

Open loop (``--rate``) offers requests by one of two arrival processes
(``--arrivals``): ``poisson`` (the default) draws each connection's gaps from an
exponential distribution of mean connections/rate, so the connections together offer a
Poisson stream (independent arrivals: bursts and lulls as real clients make them);
``uniform`` spaces each connection's requests exactly connections/rate apart (a
metronome: no bursts, so queues stay shorter and percentiles lower than real traffic
gives). The gaps come from a generator seeded by ``--seed`` and the connection's slot, so
a run's arrival times are the same on every repeat with the same seed.

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
import time
from typing import Any

from bench import records
from servers.argtypes import non_negative_float, non_negative_int, positive_float, positive_int

WORKLOADS = ("echo", "echo-connect", "http", "http-connect", "http-pipeline", "file",
             "guestbook", "guestbook-post")
APP_WORKLOADS = ("file", "guestbook", "guestbook-post")  # need a --root or a Redis
GUESTBOOK_PATH = "/guestbook"
GUESTBOOK_MARKER = "<!-- tcp-zoo guestbook -->"  # servers.core.guestbook.PAGE_MARKER
ERROR_KINDS = records.ERROR_KINDS
RESULT_KEYS = (
    "workload", "connections", "threads", "duration_s", "requests", "requests_per_s",
    "bytes_sent", "bytes_received", "latency_us", "errors", "errors_total", "idle_open",
    "client_cpu_s", "client_cpu_util", "rate", "open_loop", "histogram", "start_late_s",
    "arrivals", "seed", "halves",
)
ARRIVALS = ("poisson", "uniform")
LATENCY_KEYS = (*records.LATENCY_KEYS, "mean")
DEFAULT_DURATION = 10.0
LIMITED_DURATION_CAP = 60.0  # with --requests and no --duration: the run's time bound
START_AT_HORIZON_S = 600.0  # as the native run: the furthest start_at it accepts


def native_problem() -> str | None:
    """Why the native load generator cannot be loaded here (not built), or None."""
    try:
        import zoo_loadgen  # noqa: F401
    except ImportError as exc:
        return f"the native load generator zoo_loadgen is not built (pip install -e .): {exc}"
    return None


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
    start_at: float | None = None,
    arrivals: str = "poisson",
    seed: int = 1,
) -> dict[str, Any]:
    """Run one load test and return the result dict (see the module docstring).

    ``rate`` (total requests/s) selects the open loop; None or 0 is the closed
    loop. ``requests`` stops the run after exactly that many completed requests
    (the duration, default 60 s then, stays an upper bound). ``file`` GETs
    ``path`` (default: the generated file of ``size`` bytes, bench.files) and checks
    its length and sampled content; ``guestbook`` GETs /guestbook and checks for
    the page's marker; ``guestbook-post`` also POSTs the form every ``post_every``
    requests of a connection and expects 303. ``start_at`` (seconds since the epoch)
    holds the clock, once connected, until that instant, so that load generators on
    several hosts start together. ``arrivals`` and ``seed``: the open loop's arrival
    process (see the module docstring). Raises ValueError for invalid
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
    if start_at is not None and not 0 < start_at <= time.time() + START_AT_HORIZON_S:
        raise ValueError(f"start_at must be an instant (seconds since the epoch) at most "
                         f"{START_AT_HORIZON_S:g} s from now")
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {arrivals!r}")
    if not 0 <= seed < 2**64:
        raise ValueError("seed must be an integer in 0..2**64-1")
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
    import zoo_loadgen as _loadgen

    address = resolve(host, port)
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    result: dict[str, Any] = _loadgen.run(
        address, port, workload, connections, float(duration),
        threads=threads, rate=float(rate or 0.0), size=size, pipeline=pipeline, idle=idle,
        warmup=float(warmup), requests=requests or 0, timeout=float(timeout),
        host_header=host_header, start_at=float(start_at or 0.0), **app,
        arrivals=arrivals, seed=seed,
    )
    result.pop("wall_s", None)
    result["rate"] = float(rate) if rate else None
    result["open_loop"] = bool(rate)
    result["arrivals"] = arrivals if rate else None
    result["seed"] = seed if rate else None
    return {key: result[key] for key in RESULT_KEYS}


def percentile(buckets: list[list[int]], max_us: int, p: float) -> int:
    """The value at percentile ``p`` of a histogram, computed as the native run does:
    the highest value of the bucket holding that rank, capped at the maximum."""
    total = sum(count for _, count in buckets)
    if total == 0:
        return 0
    rank = min(max(int(p / 100.0 * total + 0.999999), 1), total)
    seen = 0
    for high, count in buckets:
        seen += count
        if seen >= rank:
            return min(high, max_us)
    return max_us


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the results of load generators that ran at the same time (one
    per client host): counts and rates add up, latencies come from the summed
    histogram buckets (exact, not averaged percentiles), the client CPU share is the
    busiest host's. Raises ValueError on an empty list or a result without buckets."""
    if not results:
        raise ValueError("nothing to merge")
    if any("histogram" not in r for r in results):
        raise ValueError("a result without its histogram cannot be merged exactly")
    counts: dict[int, int] = {}
    for r in results:
        for high, count in r["histogram"]["buckets"]:
            counts[high] = counts.get(high, 0) + count
    buckets = [[high, counts[high]] for high in sorted(counts)]
    max_us = max(r["histogram"]["max_us"] for r in results)
    sum_ns = sum(r["histogram"]["sum_ns"] for r in results)
    samples = sum(counts.values())
    merged = dict(results[0])
    merged.update(
        connections=sum(r["connections"] for r in results),
        threads=sum(r["threads"] for r in results),
        duration_s=max(r["duration_s"] for r in results),
        requests=sum(r["requests"] for r in results),
        requests_per_s=sum(r["requests_per_s"] for r in results),
        bytes_sent=sum(r["bytes_sent"] for r in results),
        bytes_received=sum(r["bytes_received"] for r in results),
        errors={kind: sum(r["errors"].get(kind, 0) for r in results) for kind in ERROR_KINDS},
        errors_total=sum(r["errors_total"] for r in results),
        idle_open=sum(r["idle_open"] for r in results),
        client_cpu_s=sum(r["client_cpu_s"] for r in results),
        client_cpu_util=max(r["client_cpu_util"] for r in results),
        rate=sum(r["rate"] for r in results) if all(r["rate"] for r in results) else None,
        histogram={"buckets": buckets, "sum_ns": sum_ns, "max_us": max_us},
        start_late_s=max(r["start_late_s"] for r in results),
    )
    merged["latency_us"] = {
        **{key: percentile(buckets, max_us, p) for key, p in
           (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))},
        "max": max_us, "mean": sum_ns / samples / 1000.0 if samples else 0.0,
    }
    if all("halves" in r for r in results):
        # the halves' counts add up exactly; their p99 is the worst host's (no buckets)
        halves = [r["halves"] for r in results]
        merged["halves"] = {
            "duration_s": [max(h["duration_s"][i] for h in halves) for i in (0, 1)],
            "requests": [sum(h["requests"][i] for h in halves) for i in (0, 1)],
            "p99_us": [max(h["p99_us"][i] for h in halves) for i in (0, 1)],
        }
    return merged


def format_human(result: dict[str, Any]) -> str:
    """A few lines: throughput, latency percentiles, errors."""
    lat = result["latency_us"]
    loop = (f"open loop at {result['rate']:.0f} req/s ({result['arrivals']} arrivals)"
            if result["open_loop"] else "closed loop")
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
    parser.add_argument("--start-at", type=positive_float, default=None, metavar="EPOCH_S",
                        help="once connected, start the clock at this CLOCK_REALTIME instant "
                             "(seconds since the epoch; load generators on several hosts)")
    parser.add_argument("--arrivals", choices=ARRIVALS, default="poisson",
                        help="open loop: exponential gaps (poisson, the default) or a fixed "
                             "period (uniform) between a connection's requests")
    parser.add_argument("--seed", type=non_negative_int, default=1,
                        help="open loop, poisson: the arrival generator's seed (default 1)")
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
            post_every=options.post_every, start_at=options.start_at,
            arrivals=options.arrivals, seed=options.seed,
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
