"""The guest's kernel: the newest installed Debian kernel with modules and headers, and
the kernel modules of ``kmod/`` built against it.

The host cannot load modules, so :mod:`bench.vm_qemu` boots this same kernel in a QEMU
guest (from the image and initramfs :mod:`bench.vm_image` makes) and the modules built
here are loaded there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KMOD = ROOT / "kmod"
CACHE = ROOT / ".vm"  # the guest's kernel image, initramfs and run scripts


class VmError(RuntimeError):
    """The guest could not be prepared, booted or did not finish in time."""


def kernel_version() -> str:
    """The newest kernel with an image in /boot, modules and matching build headers."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        ver = image.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / ver / "modules.dep").is_file() and kdir_for(ver).is_dir():
            found.append(ver)
    if not found:
        raise VmError("no /boot/vmlinuz-* with matching /lib/modules and build headers")

    def key(v: str) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", v)]

    return max(found, key=key)


def kdir_for(ver: str) -> Path:
    """The build directory (headers) for kernel ``ver``."""
    build = Path("/lib/modules") / ver / "build"
    if (build / "Makefile").is_file():
        return build
    return Path("/usr/src") / f"linux-headers-{ver}"


def build_modules(ver: str | None = None, quiet: bool = True) -> Path:
    """``make -C kmod KDIR=...`` for the installed Debian kernel; returns the kmod dir."""
    ver = ver or kernel_version()
    cmd = ["make", "-C", str(KMOD), f"KDIR={kdir_for(ver)}", f"-j{os.cpu_count() or 1}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise VmError(f"module build failed:\n{proc.stdout}\n{proc.stderr}")
    if not quiet:
        sys.stdout.write(proc.stdout)
    return KMOD
