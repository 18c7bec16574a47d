"""The harness's typed records (bench.records) against what the code before them wrote.

``fixtures/results-9a1842f`` holds results.json, results.csv and summary.md written by
the report of commit 9a1842f (string-keyed dicts) from recorded runs of the zoo: ok,
errors, failed, skipped and partial cells, kernel reruns, a remote run and three
capacity searches. The records must read that results.json and write it back unchanged,
fold its samples into the same results, tables and CSV, and ``bench compare`` must
still read a result set from before intervals were stored. The load generator's outcome
carries its status (timeout, failed) instead of the harness reading it from the text.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import aggregate, compare, report, runner
from bench.records import Result, Run, Status, csv_columns, metric_fields

FIXTURE = Path(__file__).parent / "fixtures" / "results-9a1842f"


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads((FIXTURE / "results.json").read_text())


def test_results_json_round_trips(document: dict) -> None:
    assert {r["status"] for r in document["runs"]} >= {"ok", "errors", "failed", "skipped",
                                                       "partial"}
    for written in document["runs"]:
        result = Result.from_dict(written)
        assert all(isinstance(s, Run) for s in result.samples)
        assert result.to_dict() == written
        assert json.loads(json.dumps(result.to_dict())) == written  # plain JSON types


def test_keys_the_records_do_not_know_are_kept(document: dict) -> None:
    written = copy.deepcopy(document["runs"][0])
    written["from_the_future"] = {"x": 1}
    written["samples"][0]["also_new"] = [1, 2]
    result = Result.from_dict(written)
    assert result.extra == {"from_the_future": {"x": 1}}
    assert result.to_dict() == written


def test_the_samples_fold_into_the_same_outputs(document: dict, tmp_path: Path) -> None:
    """Re-aggregated by bench.aggregate and written by bench.report, the recorded runs
    give the results.json, results.csv and summary.md the old code wrote."""
    runs = [Run.from_dict(s) for r in document["runs"] for s in r["samples"]]
    meta = {k: v for k, v in document["meta"].items() if k not in ("plots", "plot_error")}
    report.write_outputs(str(tmp_path), runs, meta, document["capacity"])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["runs"] == document["runs"]
    assert written["ranking"] == document["ranking"]
    assert written["capacity"] == document["capacity"]
    old_csv = (FIXTURE / "results.csv").read_text()
    assert old_csv.splitlines()[0].split(",")[:len(csv_columns())] == csv_columns()
    assert (tmp_path / "results.csv").read_text() == old_csv
    assert (tmp_path / "summary.md").read_text() == (FIXTURE / "summary.md").read_text()


def test_compare_reads_a_result_set_from_before_intervals(document: dict,
                                                          tmp_path: Path) -> None:
    """An older results.json (no ci, no unstable, samples without halves): compare falls
    back to the min..max of the repeats, and the CLI reads both versions."""
    older = copy.deepcopy(document)
    for r in older["runs"]:
        for key in ("ci", "ci_pct", "ci_converged", "unstable"):
            del r[key]
        for s in r["samples"]:
            s.pop("halves", None)
            s.pop("unstable", None)
    (tmp_path / "old.json").write_text(json.dumps(older))
    (tmp_path / "new.json").write_text(json.dumps(document))
    old = report.results_of(report.load_results(str(tmp_path / "old.json")))
    assert all(r.ci is None for r in old)
    spread = next(r for r in old if r.requests_per_s_max and r.requests_per_s_min
                  and r.requests_per_s_max > r.requests_per_s_min)
    assert compare._interval(spread) == {"low": spread.requests_per_s_min,
                                         "high": spread.requests_per_s_max}
    done = subprocess.run([sys.executable, "-m", "bench", "compare", str(tmp_path / "old.json"),
                           str(tmp_path / "new.json")], capture_output=True, text=True,
                          timeout=60, cwd=runner.REPO)
    assert done.returncode == 0, done.stderr
    assert "epoll" in done.stdout and "beyond the noise" in done.stdout
    (tmp_path / "bad.json").write_text(json.dumps({"runs": [{"server": "x"}]}))
    bad = subprocess.run([sys.executable, "-m", "bench", "compare", str(tmp_path / "bad.json"),
                          str(tmp_path / "new.json")], capture_output=True, text=True,
                         timeout=60, cwd=runner.REPO)
    assert bad.returncode == 2 and "cannot read results" in bad.stderr, bad.stderr


def test_every_metric_field_folds_as_its_metadata_says() -> None:
    """A metric is one field: declared, it is folded, written to JSON and (unless said
    otherwise) to the CSV without another line anywhere."""
    fields = [f for f in metric_fields() if f.metadata["fold"] != "derived"]
    runs = [Run(server="a", workload="echo", concurrency=1, status=Status.OK,
                requests_per_s=100.0, requests=100, **{f.name: v for f in fields})
            for v in (1.0, 3.0, 8.0)]
    (result,) = aggregate.aggregate(runs)
    expected = {"median": 3.0, "peak": 8.0, "first": 1.0}
    for f in fields:
        assert getattr(result, f.name) == expected[f.metadata["fold"]], f.name
        assert result.to_dict()[f.name] == expected[f.metadata["fold"]], f.name
        assert (f.name in csv_columns()) == f.metadata["csv"], f.name
    assert result.client_bound  # derived from the folded load generator's share
    assert result.interval("cpu_us_per_req") is not None


def test_no_why_heading_for_a_workload_without_rows() -> None:
    runs = [Run(server="a", workload="echo", concurrency=100, status=Status.OK,
                requests_per_s=1000.0, requests=1000),
            Run(server="a", workload="http", concurrency=100, status=Status.FAILED,
                reason="server died during the run (exit status 1)")]
    text = report.console_report(aggregate.aggregate(runs))
    assert "-- echo at c=100: why --" in text
    assert "-- http at c=100: cost per request (why) --" in text
    assert "http at c=100: why" not in text


def _loadgen(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_the_load_generator_outcome_carries_its_status() -> None:
    """Killed for time: timeout; a failing or silent one: failed; JSON: ok. The status
    comes with the outcome, whatever its message says."""
    killed = runner.finish_loadgen(_loadgen("import time; time.sleep(30)"), 0.3)
    assert killed.result is None and killed.status == Status.TIMEOUT, killed
    failed = runner.finish_loadgen(_loadgen("import sys; sys.exit('did not finish')"), 20)
    assert failed.result is None and failed.status == Status.FAILED, failed
    assert "did not finish" in failed.problem  # the text no longer decides
    silent = runner.finish_loadgen(_loadgen("print('no json')"), 20)
    assert silent.result is None and silent.status == Status.FAILED, silent
    fine = runner.finish_loadgen(_loadgen("print('{\"requests\": 3}')"), 20)
    assert fine == (({"requests": 3}), "", Status.OK)
