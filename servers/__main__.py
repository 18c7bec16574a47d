"""``python -m servers``: the registry as a table, or ``--json`` for tools."""

from __future__ import annotations

import argparse
import json

from servers.registry import ENTRIES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m servers",
                                     description="List the servers of the zoo.")
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    options = parser.parse_args(argv)
    if options.json:
        print(json.dumps([entry.as_dict() for entry in ENTRIES], indent=2))
        return
    from tabulate import tabulate  # only the table needs it: --json runs on the stdlib

    rows = [
        (e.name, e.model, e.multiplexer, "yes" if e.sendfile else "no", e.description, e.limits,
         "python " + " ".join(e.argv))
        for e in ENTRIES
    ]
    print(tabulate(rows, headers=("name", "model", "multiplexer", "sendfile", "description",
                                  "limits", "start with"), maxcolwidths=[None, None, None, None,
                                                                         36, 36, None]))


if __name__ == "__main__":
    main()
