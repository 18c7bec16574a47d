"""The report's readings in words: why a server is slower, and what to distrust.

:func:`diagnose` gives one line per server of a cell saying where it loses against the
fastest, read from the per-request costs; :func:`noise_warning` warns when the machine
was busy during the runs; :func:`not_clean` lists every result that failed, was
skipped or is unstable, with its reason.
"""

from __future__ import annotations

from bench.aggregate import median
from bench.records import NOT_RUN, Result, Status, client_starved
from bench.tables import fmt_rate

COSTLIER = 1.5  # this many times the fastest's cost per request is worth a line
WAITING_UTIL = 0.7  # a server's core busier than this computes; below it, it waits
NEIGHBOURS_NOTED = 0.2  # others' share of a server's core worth a line
NEIGHBOURS_WARNED = 0.1  # the median share over all runs that earns the warning


def diagnose(results: list[Result], workload: str, concurrency: int) -> list[str]:
    """One line per server saying where it loses against the fastest, from its costs.

    The fastest usable server is the yardstick; a server is said to spend more
    CPU, system calls or context switches per request when it spends at least
    1.5x as much, and to wait rather than compute when its core was less than 70%
    busy (one client at a time, a blocking hand-off, a stall).
    """
    chosen = [r for r in results if r.workload == workload and r.concurrency == concurrency
              and r.measured]
    chosen.sort(key=lambda r: -(r.requests_per_s or 0))
    if not chosen:
        return []
    best = next((r for r in chosen if r.usable), chosen[0])
    assert best.requests_per_s is not None
    lines = []
    for r in chosen:
        assert r.requests_per_s is not None
        notes = []
        ratio = best.requests_per_s / r.requests_per_s
        if r is not best:
            notes.append(f"{ratio:.1f}x slower than {best.server}" if ratio >= 1.1 else
                         f"within 10% of {best.server}")
        for key, what, floor in (("cpu_us_per_req", "CPU per request", 0.0),
                                 ("syscalls_per_req", "system calls per request", 0.05),
                                 ("ctx_per_req", "context switches per request", 0.05)):
            mine, theirs = r.value(key), best.value(key)
            if r is best or mine is None or theirs is None or mine < floor:
                continue
            if mine >= COSTLIER * max(theirs, floor):
                notes.append(f"{mine / max(theirs, 1e-9):.1f}x the {what} "
                             f"({mine:.3g} vs {theirs:.3g})" if theirs >= floor / 5 else
                             f"{mine:.2g} {what} ({best.server}: {theirs:.2g})")
        # busy share implied by the medians of cost and rate (one consistent pair)
        util = (r.cpu_us_per_req * r.requests_per_s / 1e6
                if r.cpu_us_per_req is not None else r.server_cpu_util)
        foreign = r.foreign_cpu_util
        if foreign is not None and foreign >= NEIGHBOURS_NOTED:
            notes.append(f"other processes took {100 * foreign:.0f}% of its core (noise)")
        elif util is not None and util < WAITING_UTIL and not r.client_bound:
            notes.append(f"its core only {100 * util:.0f}% busy: it waits rather than computes")
        if r is best:
            bits = [f"{r.cpu_us_per_req:.1f} us CPU" if r.cpu_us_per_req else "",
                    f"{r.syscalls_per_req:.2f} system calls"
                    if r.syscalls_per_req is not None else "",
                    f"{r.ctx_per_req:.3f} context switches" if r.ctx_per_req is not None
                    else ""]
            costs = ", ".join(b for b in bits if b)
            notes.insert(0, f"fastest: {costs} per request" if costs else "fastest")
        if r.littles_share is not None:
            notes.append(_littles_reading(r, r.littles_share, util))
        if r.client_bound:
            notes.append("client-bound: the figure is a floor")
        elif client_starved(r.client_core_busy, r.client_cpu_util):
            notes.append("load generator's core busy with other work")
        if r.errors_total:
            notes.append(f"{r.errors_total} errors")
        lines.append(f"{r.server}: " + "; ".join(notes or ["on a par with the fastest"]))
    return lines


def _littles_reading(r: Result, share: float, util: float | None) -> str:
    """What capped a guestbook server, read from its share of the Little's-law limit."""
    limit = fmt_rate(r.littles_limit)
    if share >= 0.8:
        return (f"{100 * share:.0f}% of its Little's-law limit ({limit} req/s): the backend "
                "wait caps it")
    if util is not None and util >= 0.85:
        return (f"{100 * share:.0f}% of its Little's-law limit ({limit} req/s): its core is "
                f"{100 * util:.0f}% busy, so the GIL or the event loop caps it, not Redis")
    if r.client_bound:
        return f"{100 * share:.0f}% of its Little's-law limit ({limit} req/s): client-bound"
    return (f"{100 * share:.0f}% of its Little's-law limit ({limit} req/s) with its core "
            f"{100 * (util or 0):.0f}% busy: it waits on something else (its workers or "
            f"Redis connections, or Redis itself)")


def noise_warning(results: list[Result]) -> str:
    """A warning when other processes took a noticeable share of the server's core."""
    foreign = median(r.foreign_cpu_util for r in results) or 0.0
    client = median(r.client_core_busy for r in results) or 0.0
    client_load = sum(r.client_cpu_util or 0.0 for r in results) / max(len(results), 1)
    problems = []
    if foreign >= NEIGHBOURS_WARNED:
        problems.append(f"other processes used a median {100 * foreign:.0f}% of the server's "
                        "core")
    if client_starved(client, client_load):
        problems.append(f"the load generator's core was a median {100 * client:.0f}% busy, "
                        "mostly with other work")
    if not problems:
        return ""
    return ("WARNING: " + " and ".join(problems) + " during the runs: this machine was busy, "
            "so the figures are noisy (see the spreads and the 'others on srv core' column); "
            "rerun on a quiet machine before concluding")


def not_clean(results: list[Result]) -> list[str]:
    """One line per result that is not clean (one per server and reason for n/a and
    skipped servers), and one per unstable cell."""
    lines = []
    skipped: set[str] = set()
    for r in results:
        if r.status in NOT_RUN and r.reason:
            key = f"{r.server}: {r.reason[:160]}"
            if key not in skipped:  # one line per server and reason
                skipped.add(key)
                lines.append(f"{r.server}: " + (
                    r.reason[:160] if r.status == Status.NA
                    else f"skipped: {r.reason[:160]}"))
        elif r.status != Status.OK and r.reason:
            lines.append(f"{r.server} {r.workload} c={r.concurrency}: "
                         f"{r.status}: {r.reason[:160]}")
        if r.unstable:
            lines.append(f"{r.server} {r.workload} c={r.concurrency}: {r.unstable[:160]}")
    return lines

