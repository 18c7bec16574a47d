"""index.html: one self-contained page of a benchmark run, to browse from disk.

Everything is inside the file: the environment, the exact command, every table of the
console report (capacity, requests/s, latency, costs, ranking), the "why" lines, the
not-clean list and every plot, embedded as a base64 PNG. No script, style sheet, font
or image is fetched, so it opens the same from a laptop's disk or a mail attachment.
Each table sorts by any column on a click of its heading (a few lines of inline
script: numbers sort by value, "12.3k" and "4.5ms" included, text alphabetically).
"""

from __future__ import annotations

import base64
import html
import os
import shlex
from typing import Any

from bench import aggregate, tables, why
from bench.records import Result

SORT_SCRIPT = """
function cellKey(text) {
  var m = text.replace(/[*]/g, "").trim().match(/^(-?[0-9.]+)\\s*(k|M)?(us|ms|s)?/);
  if (!m) return [1, text.toLowerCase()];
  var v = parseFloat(m[1]) * ({k: 1e3, M: 1e6}[m[2]] || 1) *
          ({us: 1, ms: 1e3, s: 1e6}[m[3]] || 1);
  return [0, v];
}
function sortBy(th) {
  var table = th.closest("table"), body = table.tBodies[0];
  var col = Array.prototype.indexOf.call(th.parentNode.children, th);
  var up = th.getAttribute("data-dir") !== "up";
  th.parentNode.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
  th.setAttribute("data-dir", up ? "up" : "down");
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = cellKey(a.cells[col].textContent), y = cellKey(b.cells[col].textContent);
    var d = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
    return up ? d : -d;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.querySelectorAll("table.sortable thead th").forEach(function (th) {
  th.addEventListener("click", function () { sortBy(th); });
});
"""

STYLE = """
body { font: 14px/1.4 sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
thead th { background: #eee; cursor: pointer; user-select: none; }
th[data-dir=up]::after { content: " \\25B2"; } th[data-dir=down]::after { content: " \\25BC"; }
code, pre { background: #f6f6f6; padding: 2px 4px; }
.note { background: #fff4d6; padding: 6px; } img { max-width: 100%; }
"""


def _table(text: str) -> str:
    """A tabulate HTML table made sortable (tabulate escapes the cells)."""
    return text.replace("<table>", '<table class="sortable">', 1)


def _image(out_dir: str, name: str) -> str:
    try:
        with open(os.path.join(out_dir, name), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
    except OSError as exc:
        return f"<p>plot {html.escape(name)} missing: {html.escape(str(exc))}</p>"
    return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>")


def _environment(meta: dict[str, Any]) -> list[tuple[str, str]]:
    machine = meta.get("machine") or {}
    settings = meta.get("settings") or {}
    packages = ", ".join(f"{k} {v}" for k, v in (meta.get("packages") or {}).items() if v)
    return [
        ("machine", f"{machine.get('cpu_model', '?')}, {machine.get('cpus', '?')} CPUs, "
                    f"{(machine.get('memory_bytes') or 0) / 2**30:.1f} GiB, "
                    f"{machine.get('hostname', '?')}"),
        ("kernel", str(meta.get("kernel", "?"))),
        ("python", str(meta.get("python", "?")).split("\n")[0]),
        ("packages", packages or "?"),
        ("git", str(meta.get("git", "?"))),
        ("cores", f"server {meta.get('server_cpus')}, load generator {meta.get('client_cpus')}"),
        ("system calls", str(meta.get("perf", "?"))),
        ("settings", ", ".join(f"{k} {v}" for k, v in settings.items())),
        ("started", f"{meta.get('started', '?')}, wall time {meta.get('wall_s') or 0:.0f} s"),
    ]


def render(results: list[Result], meta: dict[str, Any], out_dir: str,
           capacity: list[dict[str, Any]] | None = None) -> str:
    """The whole page for aggregated ``results`` (bench.aggregate), their ``meta`` and
    the plots named in ``meta["plots"]`` under ``out_dir``."""
    esc = html.escape
    command = "python -m bench " + shlex.join(meta.get("argv") or [])
    body = ["<h1>tcp-zoo benchmark</h1>"]
    for note in (meta.get("header_note"), why.noise_warning(results)):
        if note:
            body.append(f'<p class="note">{esc(note)}</p>')
    body.append(f"<h2>Command</h2><pre>{esc(command)}</pre>")
    body.append('<h2>Environment</h2><table id="environment"><tbody>' + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _environment(meta))
        + "</tbody></table>")
    body.append(f"<p>{esc(tables.LEGEND)}</p>")
    for workload in aggregate.order(c["workload"] for c in capacity or []):
        body.append(f"<h2>{esc(tables.capacity_heading(capacity or [], workload))}</h2>")
        body.append(_table(tables.capacity_table(capacity or [], workload, "html")))
    for workload in aggregate.workloads_of(results):
        body.append(f"<h2>{esc(workload)}</h2><h3>requests/s (median of repeats)</h3>")
        body.append(_table(tables.throughput_table(results, workload, "html")))
        body.append("<h3>p99 latency</h3>")
        body.append(_table(tables.latency_table(results, workload, "p99", "html")))
        for c in aggregate.concurrencies_of(results, workload):
            body.append(f"<h3>cost per request at c={c}</h3>")
            body.append(_table(tables.cost_table(results, workload, c, "html")))
            reading = why.diagnose(results, workload, c)
            if reading:
                body.append(f"<h4>why (c={c})</h4><ul>" + "".join(
                    f"<li>{esc(line)}</li>" for line in reading) + "</ul>")
    rank = aggregate.ranking(results)
    if rank:
        body.append("<h2>Ranking</h2><p>Mean over all cells of the server's requests/s as a "
                    "share of the best in that cell; a tie with the best counts 100%, errors "
                    "or failure 0; '=' marks a rank shared within the noise.</p>")
        body.append(_table(tables.ranking_table(rank, aggregate.workloads_of(results), "html")))
    plots = meta.get("plots") or []
    if plots:
        body.append("<h2>Plots</h2>" + "".join(_image(out_dir, name) for name in plots))
    lines = why.not_clean(results)
    body.append('<h2>Not clean</h2><ul id="not-clean">' + (
        "".join(f"<li>{esc(line)}</li>" for line in lines) or "<li>none</li>") + "</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>tcp-zoo benchmark {esc(str(meta.get('started', '')))}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body)
            + f"\n<script>{SORT_SCRIPT}</script></body></html>\n")
