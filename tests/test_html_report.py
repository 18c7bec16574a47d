"""index.html of a benchmark run (bench.html_report): self-contained, and it renders.

The outputs of a small synthetic run (aggregated repeats, a capacity search, the real
plots) are written with report.write_outputs; the page must reference nothing outside
itself, and headless Chromium (the distribution's) must show its tables, images, lists
and command, and sort a table when a heading is clicked. The browser test skips with
its reason where no browser runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import report
from bench.records import Run, Status
from tests.browser import headless_chromium, why_no_browser

COMMAND = ["--servers", "a,b,c", "--slo", "p99=5ms", "--workloads", "echo"]


def fake_run(server: str, rps: float, repeat: int, status: str = "ok") -> Run:
    return Run(server=server, workload="echo", concurrency=10, repeat=repeat,
               status=Status(status), requests_per_s=rps, requests=int(rps),
               latency_us={"p50": 100, "p90": 200, "p99": 400 + rps / 10, "p999": 900,
                           "max": 2000})


def search(server: str, capacity_rps: float | None) -> dict:
    probes = [{"rate": r, "requests_per_s": r, "p99": p, "ok": p <= 5000, "status": "ok",
               "errors_total": 0, "reason": ""}
              for r, p in ((1000.0, 800), (2000.0, 3000), (4000.0, 40_000))]
    return {"server": server, "workload": "echo", "concurrency": 10, "key": "p99",
            "target_us": 5000.0, "capacity_rps": capacity_rps,
            "bracket": [capacity_rps, 4000.0], "feasible": capacity_rps is not None,
            "resolution": 0.1, "lowest": 800, "peak_rps": 4200.0, "probes": probes,
            "reason": "" if capacity_rps else "no rate down to 500 req/s kept p99 within 5 ms",
            "arrivals": "poisson", "seed": 1, "resolution_asked": 0.1, "wall_s": 3.0}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("results")
    runs = [fake_run("a", v, i) for i, v in enumerate((1000, 1100, 1050))]
    runs += [fake_run("b", v, i) for i, v in enumerate((3000, 3100, 2900))]
    runs += [fake_run("c", 500, i, status="failed") for i in range(3)]
    for r in runs[6:]:
        r.reason = "server died during the run (exit status 1)"
    meta = {"argv": COMMAND, "settings": {"duration": 0.5, "repeat": 3},
            "machine": {"cpu_model": "Test CPU", "cpus": 2}, "kernel": "Linux test",
            "python": "3.11", "git": "abc1234", "started": "2026-11-29T16:00:00"}
    files = report.write_outputs(str(out), runs, meta,
                                 [search("a", 2000.0), search("b", None)])
    assert "index.html" in files
    return out / "index.html"


def test_the_page_is_self_contained(written: Path) -> None:
    page = written.read_text()
    # nothing fetched: no external URL in any src/href, every image inline
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    images = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(images) >= 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "python -m bench --servers a,b,c --slo p99=5ms --workloads echo" in page
    assert "server died during the run" in page  # the not-clean list
    assert "infeasible" in page and "capacity" in page


@pytest.mark.skipif(bool(why_no_browser()), reason=why_no_browser() or "browser available")
def test_chromium_renders_and_sorts(written: Path) -> None:
    from selenium.webdriver.common.by import By

    with headless_chromium() as browser:
        browser.get(written.as_uri())
        assert browser.title.startswith("tcp-zoo benchmark")
        tables = browser.find_elements(By.CSS_SELECTOR, "table.sortable")
        assert len(tables) >= 5  # capacity, requests/s, p99, costs, ranking
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 3
        for img in images:  # decoded and laid out, not a broken-image icon
            assert browser.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", img) > 100
        assert "python -m bench --servers a,b,c" in browser.find_element(By.TAG_NAME,
                                                                         "pre").text
        assert browser.find_elements(By.CSS_SELECTOR, "#not-clean li")

        capacity = tables[0]

        def first_column() -> list[str]:
            return [row.find_elements(By.TAG_NAME, "td")[0].text
                    for row in capacity.find_elements(By.CSS_SELECTOR, "tbody tr")]

        assert first_column() == ["a", "b"]  # highest capacity first
        heading = capacity.find_elements(By.CSS_SELECTOR, "thead th")[0]
        heading.click()
        assert first_column() == ["a", "b"]
        heading.click()
        assert first_column() == ["b", "a"]
        rate_heading = tables[1].find_elements(By.CSS_SELECTOR, "thead th")[1]
        rate_heading.click()  # requests/s ascending: "1.05k" sorts below "3.00k"
        cells = [row.find_elements(By.TAG_NAME, "td")[0].text
                 for row in tables[1].find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert cells.index("a") < cells.index("b"), cells
