"""What the guest boots: the kernel image (an uncompressed vmlinux where QEMU can boot it
directly) and a tiny busybox initramfs, both cached under ``.vm/<kernel>/``.

The initramfs loads the virtio and 9p modules, mounts the host's ``/`` over virtio-9p,
moves that mount onto ``/`` and enters it (as switch_root does, so the guest's tasks
are not in a chroot and can make user namespaces), and runs the one command named on
the kernel command line from the project directory, between the :data:`BEGIN` and
:data:`END_RE` markers (:mod:`bench.vm_qemu` reads them off the serial console), so the
host's Python, venv and tree are used unchanged.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from bench.vm_kernel import CACHE, ROOT, VmError, build_modules, kernel_version

# Boot-time modules, in dependency order (checked against modules.dep at build time).
GUEST_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "netfs", "fscache", "9pnet", "9pnet_virtio", "9p",
)
# The serial-console markers around the guest command's output: the init script prints
# them, bench.vm_qemu reads them.
BEGIN = "@@TCPZOO-BEGIN@@"
END_RE = re.compile(r"@@TCPZOO-END rc=(\d+)@@")
BUSYBOX = "/bin/busybox"
# 9p cache mode of the host root in the guest (TCPZOO_VM_9P_CACHE overrides).
NINEP_CACHE = os.environ.get("TCPZOO_VM_9P_CACHE", "loose")


# -- kernel image ----------------------------------------------------------------------------


def _decompress_vmlinux(image: bytes) -> bytes | None:
    """The ELF vmlinux inside a bzImage: try each compressor's magic, keep the first ELF."""
    magics: list[tuple[bytes, str]] = [
        (b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"),
    ]
    for magic, kind in magics:
        start = image.find(magic)
        while start != -1:
            blob = image[start:]
            try:
                if kind == "xz":
                    out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
                elif kind == "gzip":
                    out = gzip.GzipFile(fileobj=io.BytesIO(blob)).read()
                else:
                    out = _unzstd(blob)
            except (lzma.LZMAError, OSError, EOFError, subprocess.SubprocessError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = image.find(magic, start + 1)
    return None


def _unzstd(blob: bytes) -> bytes:
    if shutil.which("zstd") is None:
        return b""
    proc = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, timeout=60)
    return proc.stdout


def _has_pvh_note(elf: bytes) -> bool:
    """Whether the ELF has XEN_ELFNOTE_PHYS32_ENTRY (18): then QEMU boots it directly."""
    note = rb"\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00"
    return re.search(note, elf) is not None


def kernel_image(ver: str) -> tuple[Path, bool]:
    """(image, is_pvh_elf): a cached uncompressed vmlinux when it has a PVH entry."""
    cached = CACHE / ver / "vmlinux"
    if cached.is_file():
        return cached, True
    vmlinuz = Path("/boot") / f"vmlinuz-{ver}"
    elf = _decompress_vmlinux(vmlinuz.read_bytes())
    if elf is not None and _has_pvh_note(elf):
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(elf)
        tmp.replace(cached)
        return cached, True
    return vmlinuz, False


# -- initramfs -------------------------------------------------------------------------------

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in __MODULES__; do insmod /lib/modules/$m.ko || echo "init: insmod $m failed"; done
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
H=/mnt/host
mkdir -p $H
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=__CACHE__ hostroot $H || \
  mount -t 9p -o trans=virtio,version=9p2000.L hostroot $H || echo "init: 9p mount failed"
mount -t proc proc $H/proc
mount -t sysfs sys $H/sys
mount -t devtmpfs dev $H/dev
mkdir -p /dev/pts; mount -t devpts devpts $H/dev/pts 2>/dev/null
# The guest gets its own /tmp and /run; a checkout that lives under one of them (a CI
# clone in /tmp, say) is bound back on top so the guest still sees the project.
P=__ROOT__
case "$P" in
  /tmp/*|/run/*) mkdir -p /mnt/project; mount -o bind "$H$P" /mnt/project;;
  *) P="";;
esac
mount -t tmpfs -o size=512m tmp $H/tmp
mount -t tmpfs run $H/run 2>/dev/null
if [ -n "$P" ]; then mkdir -p "$H$P"; mount -o bind /mnt/project "$H$P"; fi
RUN=$(sed -n 's/.*tcpzoo\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
echo 3 > /proc/sys/kernel/printk
# The host tree becomes the namespace's root (mounts under it move along), not a chroot:
# the kernel refuses user namespaces to a chrooted task. This shell keeps the initramfs
# as its own root, so its busybox applets below still resolve.
cd $H && mount -o move . / || echo "init: moving the host root onto / failed"
if [ -n "$RUN" ]; then
  echo "__BEGIN__"
  chroot . /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 TCPZOO_GUEST=1 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/sh "$RUN" </dev/null 2>&1
  echo "@@TCPZOO-END rc=$?@@"
else
  setsid cttyhack chroot . /usr/bin/env TCPZOO_GUEST=1 /bin/sh -c 'cd __ROOT__; exec bash -l'
fi
sync
poweroff -f
"""


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 1) -> bytes:
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + name_b
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def _module_order(ver: str) -> list[Path]:
    """GUEST_MODULES as files, with any dependency modules.dep adds, deps first."""
    base = Path("/lib/modules") / ver
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {re.sub(r"\.ko(\..*)?$", "", Path(p).name).replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        if path not in order:
            order.append(path)

    for name in GUEST_MODULES:
        if name in by_name:
            visit(by_name[name])
    return [base / p for p in order]


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        return _unzstd(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    return data


def initramfs(ver: str) -> Path:
    """The cached busybox initramfs for kernel ``ver`` (rebuilt when this file changes)."""
    out = CACHE / ver / f"initramfs-{NINEP_CACHE}.cpio"
    if out.is_file() and out.stat().st_mtime >= Path(__file__).stat().st_mtime:
        return out
    if not Path(BUSYBOX).is_file():
        raise VmError(f"{BUSYBOX} missing: apt-get install busybox-static")
    mods = _module_order(ver)
    names = [re.sub(r"\.ko(\..*)?$", "", m.name) for m in mods]
    init = INIT.replace("__MODULES__", " ".join(names)).replace("__BEGIN__", BEGIN)
    init = init.replace("__ROOT__", shlex.quote(str(ROOT))).replace("__CACHE__", NINEP_CACHE)
    parts = []
    ino = 1
    for d in ("bin", "dev", "proc", "sys", "mnt", "lib", "lib/modules", "tmp"):
        parts.append(_cpio_entry(d, 0o040755, ino=ino))
        ino += 1
    parts.append(_cpio_entry("bin/busybox", 0o100755, Path(BUSYBOX).read_bytes(), ino))
    ino += 1
    parts.append(_cpio_entry("init", 0o100755, init.encode(), ino))
    ino += 1
    for mod, name in zip(mods, names, strict=True):
        parts.append(_cpio_entry(f"lib/modules/{name}.ko", 0o100644, _read_module(mod), ino))
        ino += 1
    parts.append(_cpio_entry("TRAILER!!!", 0, ino=0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(out)
    return out


def prepare(build: bool = True) -> tuple[str, Path, bool, Path]:
    """Everything a boot needs: (version, kernel image, is_pvh, initramfs)."""
    ver = kernel_version()
    if build:
        build_modules(ver)
    image, pvh = kernel_image(ver)
    return ver, image, pvh, initramfs(ver)
