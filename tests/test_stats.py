"""Confidence intervals, adaptive repeats, ties and stationarity (bench.stats), and how
the report and ``bench compare`` use them. No servers: the noise is simulated."""

from __future__ import annotations

import random

import pytest

from bench import aggregate, compare, stats, tables, why
from bench.records import LATENCY_KEYS, Run, Status

TRUE_MEDIAN = 10_000.0


def run_record(server: str, rps: float, c: int = 10, repeat: int = 0) -> Run:
    return Run(server=server, workload="echo", concurrency=c, repeat=repeat, status=Status.OK,
               requests_per_s=rps, requests=int(rps), latency_us=dict.fromkeys(LATENCY_KEYS, 100))


@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776),
                                       (5, 2.571), (9, 2.262), (19, 2.093), (60, 2.000)])
def test_t_quantile_matches_the_tables(df: int, table: float) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(table, abs=0.005)


def test_two_repeats_give_a_wide_interval_and_one_gives_none() -> None:
    assert stats.interval([1000.0]) is None
    iv = stats.interval([1000.0, 1100.0])
    assert iv is not None and iv.low < 1000 and iv.high > 1100
    assert iv.half_pct > 50  # 12.7 standard errors: two repeats prove little
    assert stats.interval([0.0, 0.0, 0.0]) is not None  # nothing measured: no log


def test_adaptive_repeats_converge_and_cover_the_true_median() -> None:
    """--ci 5% against a seeded source of 10% noise, 100 trials, through the report's
    own aggregation: every trial converges within the cap, and the interval it reports
    holds the true median in at least 90 of them (95% nominal)."""
    rng = random.Random(20261129)
    covered, repeats = 0, []
    for _trial in range(100):
        values: list[float] = []
        while stats.needs_more(values, 5.0, max_repeats=60):
            values.append(TRUE_MEDIAN * (1 + rng.gauss(0, 0.10)))
        runs = [run_record("s", v, repeat=i) for i, v in enumerate(values)]
        (result,) = aggregate.aggregate(runs, ci_target=5.0)
        assert result.ci_converged, (len(values), result.interval("requests_per_s"))
        iv = result.interval("requests_per_s")
        assert iv is not None
        covered += iv["low"] <= TRUE_MEDIAN <= iv["high"]
        repeats.append(len(values))
    assert covered >= 90, covered
    assert stats.MIN_REPEATS <= min(repeats) and max(repeats) < 60


def test_a_cell_that_does_not_converge_is_marked() -> None:
    runs = [run_record("s", v, repeat=i) for i, v in enumerate((1000, 2000, 1500, 900, 2100))]
    (result,) = aggregate.aggregate(runs, ci_target=5.0)
    assert result.ci_converged is False
    assert "~" in tables.throughput_table([result], "echo")


def test_overlapping_intervals_are_ties_in_the_table_and_the_ranking() -> None:
    runs = [run_record("a", v) for v in (1000, 1100, 1050)]
    runs += [run_record("b", v) for v in (1040, 1150, 1090)]  # overlaps a
    runs += [run_record("c", v) for v in (500, 520, 510)]  # clearly slower
    results = aggregate.aggregate(runs)
    assert aggregate.best_by_column(results, "echo") == {10: {"a", "b"}}
    table = tables.throughput_table(results, "echo")
    assert table.count("*") == 2 and "±" in table
    rank = {r["server"]: r for r in aggregate.ranking(results)}
    assert rank["a"]["rank"] == rank["b"]["rank"] == 1 and rank["a"]["tied"]
    assert rank["c"]["rank"] == 3 and not rank["c"]["tied"]
    assert "1=" in tables.ranking_table(list(rank.values()), ["echo"])


def test_compare_uses_the_same_rule() -> None:
    old = aggregate.aggregate([run_record("a", v) for v in (1000, 1100, 1050)])[0]
    tie = aggregate.aggregate([run_record("a", v) for v in (1040, 1150, 1090)])[0]
    apart = aggregate.aggregate([run_record("a", v) for v in (1500, 1550, 1520)])[0]
    assert not compare.significant(old, tie)
    assert compare.significant(old, apart)
    for a, b in ((old, tie), (old, apart)):
        assert compare.significant(a, b) == (not aggregate.tied_with(a, b))


def test_single_repeats_fall_back_to_a_threshold() -> None:
    assert not stats.differs(1000, None, 1080, None)
    assert stats.differs(1000, None, 1200, None)


def test_halves_that_disagree_are_unstable() -> None:
    steady = {"duration_s": [0.5, 0.5], "requests": [5000, 5100], "p99_us": [900, 1000]}
    slowed = {"duration_s": [0.5, 0.5], "requests": [5000, 3000], "p99_us": [900, 1000]}
    tail = {"duration_s": [0.5, 0.5], "requests": [5000, 5000], "p99_us": [900, 9000]}
    few = {"duration_s": [0.5, 0.5], "requests": [50, 40], "p99_us": [900, 9000]}
    assert stats.halves_verdict(steady) == ""
    assert "requests/s" in stats.halves_verdict(slowed)
    assert "p99" in stats.halves_verdict(tail)
    assert stats.halves_verdict(few) == ""  # 40 vs 50 answers: within count noise
    assert stats.neighbour_verdict(0.35).startswith("unstable")
    assert stats.neighbour_verdict(0.05) == ""


def test_unstable_cells_are_marked_and_listed() -> None:
    runs = [run_record("a", 1000), run_record("a", 1010, repeat=1)]
    runs[1].unstable = "unstable: p99 900 us in the first half, 9000 us in the second"
    (result,) = aggregate.aggregate(runs)
    assert "u" in tables.cell_text(result, False)
    assert any("unstable" in line for line in why.not_clean([result]))
