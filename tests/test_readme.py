"""The README's backends table lists every server of the registry."""

from __future__ import annotations

from pathlib import Path

from servers.registry import ENTRIES

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_backend_has_a_row() -> None:
    text = README.read_text()
    after = text.split("<!-- backends-table", 1)[1].splitlines()[1:]
    table = []
    for line in after:
        if not line.startswith("|"):
            break
        table.append(line)
    rows = {line.split("|")[1].strip().strip("`") for line in table[2:]}
    missing = [e.name for e in ENTRIES if e.name not in rows]
    assert not missing, f"README backends table lacks {missing}"


def test_quick_start_has_two_commands() -> None:
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert [c.split()[0:2] for c in commands] == [["./zoo", "bench"], ["./zoo", "test"]]
