"""The harness's records: one measured run, and the result of a cell's repeats.

:class:`Run` is one measured window of one server, workload and concurrency (what
:func:`bench.runner.measure` returns); :class:`Result` folds the repeats of one cell
(:func:`bench.aggregate.aggregate`). Both share :class:`Figures`, the per-run metrics:
each field says in its metadata how the repeats fold into a result (``fold``: the
median of the measured repeats, the peak, or the first run's value) and whether it is a
column of results.csv. Adding a metric is one field here and the line that measures it
(:func:`bench.runner.fill_record`).

``to_dict``/``from_dict`` read and write the keys of results.json; a key this version
does not know is kept (``extra``) and written back, so an older or newer file round-trips.
The constants every part shares live here too: the latency keys and error kinds (the
native load generator's JSON names them), the statuses, the client-bound threshold.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, TypeVar

# The load generator's JSON: latency percentiles (and "mean"), and its error kinds.
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")
PERCENTILES = LATENCY_KEYS[:-1]  # those a latency target (--slo) may name
ERROR_KINDS = ("refused", "reset", "timeout", "short", "wrong", "status", "other")

# The load generator's own share of its cores at which a figure is a floor, not the
# server's limit; the same share of those cores busy with anything makes it suspect when
# the load generator's own share stays below CLIENT_OWN_UTIL (other work starved it).
CLIENT_BOUND_UTIL = 0.9
CLIENT_OWN_UTIL = 0.7


class Status(enum.StrEnum):
    """What became of a run (or of a cell: the worst of its runs)."""

    OK = "ok"
    ERRORS = "errors"  # measured, with errors counted (or idle connections dropped)
    UNCLEAN = "unclean-exit"  # measured, but the server did not stop cleanly
    PARTIAL = "partial"  # a cell: some repeats measured, some failed
    FAILED = "failed"
    TIMEOUT = "timeout"  # the load generator did not finish in time
    SKIPPED = "skipped"  # the server cannot run on this machine (its reason kept)
    NA = "n/a"  # the server cannot serve the workload


class Failure(enum.StrEnum):
    """Why a run that failed (or timed out) measured nothing, as the runner knew it."""

    START = "start"  # the server did not become ready
    DIED = "died"  # the server died during the run
    NO_ANSWER = "no-answer"  # no request completed
    LOADGEN = "loadgen"  # the load generator failed, was killed for time, or said nothing
    METRICS = "metrics"  # the server's window was not measured (a remote host)
    PLAN = "plan"  # the run cannot be made as asked (fewer connections than client hosts)


FAILED = (Status.FAILED, Status.TIMEOUT, Status.SKIPPED, Status.NA)  # nothing measured
NOT_RUN = (Status.SKIPPED, Status.NA)  # the server cannot run here, or not this workload
STATUS_ORDER = (Status.NA, Status.SKIPPED, Status.FAILED, Status.TIMEOUT, Status.UNCLEAN,
                Status.ERRORS, Status.OK)  # worst first


def client_bound(client_cpu_util: float | None) -> bool:
    """Whether the load generator saturated its cores (the figure is a floor)."""
    return client_cpu_util is not None and client_cpu_util >= CLIENT_BOUND_UTIL


def client_starved(core_busy: float | None, client_cpu_util: float | None) -> bool:
    """Whether the load generator's cores were busy mostly with other work."""
    return ((core_busy or 0.0) >= CLIENT_BOUND_UTIL
            and (client_cpu_util or 0.0) < CLIENT_OWN_UTIL)


def _metric(fold: str, csv: bool = True, ci: bool = False) -> Any:
    """A per-run figure: ``fold`` "median" (of the measured repeats), "peak" (their
    largest) or "first" (a setting of the cell; "derived": computed from the folded
    figures); ``ci``: it gets a 95% interval."""
    return field(default=None, metadata={"fold": fold, "csv": csv, "ci": ci})


def _optional(gate: str) -> Any:
    """A key written only when field ``gate`` is set (remote runs, reruns, idle)."""
    return field(default=None, metadata={"only_with": gate})


@dataclass
class Figures:
    """The cell and the figures that a run measures and a result folds."""

    server: str
    workload: str
    concurrency: int
    status: Status = Status.FAILED
    reason: str = ""
    requests_per_s: float | None = None
    latency_us: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(LATENCY_KEYS))
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    errors_total: int = 0
    server_cpu_s: float | None = _metric("median")
    server_cpu_util: float | None = _metric("median", csv=False)
    server_cpu_s_per_10k: float | None = _metric("median")
    cpu_us_per_req: float | None = _metric("median", ci=True)
    syscalls_per_req: float | None = _metric("median", ci=True)
    ctx_per_req: float | None = _metric("median", ci=True)
    ctx_voluntary: float | None = _metric("median")
    ctx_involuntary: float | None = _metric("median")
    server_rss_bytes: int | None = _metric("peak")
    server_pss_bytes: int | None = _metric("peak")
    client_cpu_util: float | None = _metric("median")
    client_bound: bool = field(default=False, metadata={"fold": "derived", "csv": True,
                                                        "ci": False})  # client_bound()
    foreign_cpu_util: float | None = _metric("median")
    client_core_busy: float | None = _metric("median")
    mb_per_s: float | None = _metric("median", ci=True)
    cpu_us_per_mb: float | None = _metric("median")
    backend_wait_ms: float | None = _metric("first")
    backend_wait_measured_ms: float | None = _metric("first")
    littles_limit: float | None = _metric("first")
    littles_share: float | None = _metric("median")
    unstable: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @property
    def cell(self) -> tuple[str, str, int]:
        return self.server, self.workload, self.concurrency

    @property
    def measured(self) -> bool:
        """A rate was measured (errors or not): it may be plotted and diagnosed."""
        return self.requests_per_s is not None and self.status not in FAILED

    @property
    def usable(self) -> bool:
        """Measured with neither errors nor a failure: may be compared and ranked."""
        return self.status in (Status.OK, Status.UNCLEAN) and self.requests_per_s is not None

    def value(self, key: str) -> float | None:
        """A figure by name, a latency percentile included."""
        if key in LATENCY_KEYS:
            return self.latency_us.get(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """The results.json object (plain JSON types, unknown keys kept)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            gate = f.metadata.get("only_with")
            if f.name == "extra" or (gate and getattr(self, gate) is None):
                continue
            out[f.name] = _plain(getattr(self, f.name))
        out.update(self.extra)
        return out


def metric_fields() -> list[dataclasses.Field[Any]]:
    """The folded per-run figures, in declaration (and CSV column) order."""
    return [f for f in dataclasses.fields(Figures) if "fold" in f.metadata]


CI_KEYS = ("requests_per_s", *PERCENTILES,
           *(f.name for f in metric_fields() if f.metadata["ci"]))


@dataclass
class Run(Figures):
    """One measured window of one server, workload and concurrency."""

    repeat: int = 0
    requests: int = 0
    latency_mean_us: float | None = None
    syscalls: int | None = None
    server_exit: str | None = None  # "clean" or what went wrong; None: never started
    window_s: float | None = None
    duration_s: float | None = None
    bytes_received: int | None = None
    halves: dict[str, Any] | None = None
    wall_s: float = 0.0
    failure: Failure | None = _optional("failure")
    idle_open: int | None = _optional("idle_open")
    rerun_because: str | None = _optional("rerun_because")
    # remote runs (bench.remote): where the server ran, and each client host's share
    server_host: str | None = _optional("server_host")
    server_address: str | None = _optional("server_host")
    server_net_ns: str | None = _optional("server_host")
    start_late_s: float | None = _optional("server_host")
    clients: list[dict[str, Any]] | None = _optional("server_host")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        return _from_dict(cls, data)


@dataclass
class Result(Figures):
    """The repeats of one cell folded: medians, spread, intervals, the worst status."""

    repeats: int = 0
    measured_repeats: int = 0
    requests_per_s_min: float | None = None
    requests_per_s_max: float | None = None
    spread_pct: float | None = None
    server_exit: list[str] = field(default_factory=list)
    samples: list[Run] = field(default_factory=list)
    ci: dict[str, dict[str, Any] | None] | None = None  # None: written before intervals
    ci_pct: float | None = None
    ci_converged: bool | None = None

    def interval(self, key: str) -> dict[str, Any] | None:
        """The stored 95% interval of a figure (bench.stats), or None."""
        return (self.ci or {}).get(key)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        result = _from_dict(cls, data)
        result.samples = [Run.from_dict(s) for s in data.get("samples") or []]
        return result


R = TypeVar("R", Run, Result)


def _from_dict(cls: type[R], data: dict[str, Any]) -> R:
    known = {f.name for f in dataclasses.fields(cls)} - {"extra", "samples"}
    values = {k: v for k, v in data.items() if k in known}
    if "status" in values:
        values["status"] = Status(values["status"])
    if values.get("failure") is not None:
        values["failure"] = Failure(values["failure"])
    record = cls(**values)
    record.extra = {k: v for k, v in data.items()
                    if k not in known and k not in ("extra", "samples")}
    return record


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return str(value)
    if isinstance(value, Figures):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def csv_columns() -> list[str]:
    """results.csv's columns before the capacity search's: the cell, the rate and its
    spread, the latencies, every CSV metric, the intervals."""
    return ["server", "workload", "concurrency", "status", "reason", "repeats",
            "requests_per_s", "requests_per_s_min", "requests_per_s_max", "spread_pct",
            *(f"{k}_us" for k in LATENCY_KEYS), "errors_total",
            *(f.name for f in metric_fields() if f.metadata["csv"]),
            "requests_per_s_ci_low", "requests_per_s_ci_high", "ci_pct", "p99_ci_low",
            "p99_ci_high", "ci_converged", "unstable"]


def csv_row(result: Result) -> dict[str, Any]:
    """One results.csv row of a result (without the capacity columns)."""
    row: dict[str, Any] = {}
    for name in csv_columns():
        if name.endswith("_us") and name[:-3] in LATENCY_KEYS:
            row[name] = result.latency_us.get(name[:-3])
        elif name.endswith(("_ci_low", "_ci_high")):
            key, _, end = name.rpartition("_ci_")
            row[name] = (result.interval(key) or {}).get(end)
        else:
            row[name] = _plain(getattr(result, name))
    return row
