"""kmod's build-time checks, on the host: they need kernel headers, not a guest.

khttpd composes each response into a fixed output reserve; a response in wire.json
that would not fit must fail the build, not be cut at run time while Content-Length
still announces the whole body.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import vm_kernel

KMOD = Path(vm_kernel.KMOD)
WIRE = KMOD.parent / "servers" / "core" / "wire.json"


@pytest.fixture(scope="module")
def kdir() -> Path:
    try:
        return vm_kernel.kdir_for(vm_kernel.kernel_version())
    except vm_kernel.VmError as exc:
        pytest.skip(f"no kernel build tree: {exc}")


def compile_khttpd(kdir: Path, tmp: Path, wire: dict) -> subprocess.CompletedProcess[str]:
    """Generate khttpd_wire.h from ``wire`` and compile khttpd_main.o, in a copy of kmod/."""
    src = tmp / "kmod"
    src.mkdir()
    for path in KMOD.iterdir():
        if path.suffix in (".c", ".h", ".py") or path.name in ("Kbuild", "Makefile"):
            if path.name != "khttpd_wire.h" and not path.name.endswith(".mod.c"):
                shutil.copy(path, src / path.name)
    wire_json = tmp / "wire.json"
    wire_json.write_text(json.dumps(wire), encoding="utf-8")
    subprocess.run(["make", "-s", "-C", str(src), f"WIRE_JSON={wire_json}", "khttpd_wire.h"],
                   check=True, capture_output=True, timeout=60)
    return subprocess.run(["make", "-C", str(kdir), f"M={src}", "khttpd_main.o"],
                          capture_output=True, text=True, timeout=300)


def test_shipped_responses_fit(kdir: Path, tmp_path: Path) -> None:
    wire = json.loads(WIRE.read_text(encoding="utf-8"))
    proc = compile_khttpd(kdir, tmp_path, wire)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_response_over_the_reserve_fails_the_build(kdir: Path, tmp_path: Path) -> None:
    wire = json.loads(WIRE.read_text(encoding="utf-8"))
    wire["errors"]["404"]["body"] = "404 " + "y" * 1000 + "\n"
    proc = compile_khttpd(kdir, tmp_path, wire)
    assert proc.returncode != 0, "an oversized response compiled"
    assert "outgrows KHTTPD_OUT_RESERVE" in proc.stdout + proc.stderr
