"""Run commands inside a throw-away QEMU guest that boots the installed Debian kernel.

The host cannot load modules, so the kernel servers in ``kmod/`` are built against the
installed Debian headers and exercised in a guest running that same kernel. The guest
boots from a tiny busybox initramfs, mounts the host's ``/`` over virtio-9p, moves that
mount onto ``/`` and enters it (as switch_root does, so the guest's tasks are not in a
chroot and can make user namespaces) and runs one command from the project directory,
so the host's Python, venv and tree are used unchanged. Output comes back over the
serial console between markers, with the exit status; every wait is bounded.

Library: :func:`run_in_guest`. CLI::

    python -m bench.vm run [--timeout S] [--smp N] [--mem MB] -- CMD...
    python -m bench.vm test      # kernel conformance suite in the guest
    python -m bench.vm bench [ARGS]  # = python -m bench --vm [ARGS]: kernel servers
                                     # against c-epoll, CPU per request for every row
    python -m bench.vm shell     # interactive guest shell (serial console)
    python -m bench.vm build     # modules + initramfs + vmlinux only
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import io
import lzma
import os
import platform
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KMOD = ROOT / "kmod"
CACHE = ROOT / ".vm"
RUNS = CACHE / "runs"
PYTHON = ROOT / ".venv" / "bin" / "python"
MODULES = ("kecho.ko", "khttpd.ko", "drop_tcp_sock.ko")

# Boot-time modules, in dependency order (checked against modules.dep at build time).
GUEST_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "netfs", "fscache", "9pnet", "9pnet_virtio", "9p",
)
BEGIN = "@@TCPZOO-BEGIN@@"
END_RE = re.compile(r"@@TCPZOO-END rc=(\d+)@@")
BUSYBOX = "/bin/busybox"
# 9p cache mode of the host root in the guest (TCPZOO_VM_9P_CACHE overrides).
NINEP_CACHE = os.environ.get("TCPZOO_VM_9P_CACHE", "loose")


class VmError(RuntimeError):
    """The guest could not be prepared, booted or did not finish in time."""


@dataclass
class GuestResult:
    """What :func:`run_in_guest` returns; shaped like :class:`subprocess.CompletedProcess`."""

    args: list[str]
    returncode: int
    stdout: str
    boot_s: float
    total_s: float
    console: str

    def check_returncode(self) -> None:
        if self.returncode != 0:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.stdout)


# -- finding the installed kernel ----------------------------------------------------------


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


# -- booting ---------------------------------------------------------------------------------


def choose_accel(image: Path, initrd: Path) -> str:
    """``kvm`` if a probe boot under KVM really reaches the guest command, else ``tcg``.

    TCPZOO_VM_ACCEL=tcg|kvm overrides. The probe (at most 30 s) runs once per guest
    kernel and host kernel; its answer is cached under .vm/.
    """
    forced = os.environ.get("TCPZOO_VM_ACCEL")
    if forced in ("tcg", "kvm"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    stamp = initrd.parent / f"accel-{platform.release()}"
    if stamp.is_file():
        return stamp.read_text().strip()
    try:
        ok = _run_script(["true"], image, initrd, 30, 1, 512, False, "kvm").returncode == 0
    except (VmError, OSError):
        ok = False
    result = "kvm" if ok else "tcg"
    stamp.write_text(result + "\n")
    return result


def qemu_argv(image: Path, initrd: Path, append: str, smp: int, mem_mb: int,
              accel: str = "tcg") -> list[str]:
    accel = "kvm" if accel == "kvm" else "tcg,thread=multi,tb-size=256"
    cpu = "host" if accel == "kvm" else "max"
    return [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "pc", "-accel", accel, "-cpu", cpu, "-smp", str(smp), "-m", str(mem_mb),
        "-kernel", str(image), "-initrd", str(initrd), "-append", append,
        "-serial", "stdio", "-no-reboot",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,multidevs=remap",
    ]


def _cmdline(extra: str = "") -> str:
    return f"console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off nokaslr {extra}".strip()


def run_in_guest(
    argv: list[str],
    timeout: float,
    smp: int = 2,
    mem_mb: int = 2048,
    *,
    build: bool = True,
    stream: bool = False,
) -> GuestResult:
    """Boot a guest, run ``argv`` from the project root inside it, power off.

    Returns the command's exit status and its output (stdout and stderr together).
    Raises :class:`VmError` if the guest cannot start or the command does not finish
    within ``timeout`` seconds (QEMU is killed first).
    """
    _, image, _, initrd = prepare(build=build)
    accel = choose_accel(image, initrd)
    return _run_script(argv, image, initrd, timeout, smp, mem_mb, stream, accel)


def _run_script(argv: list[str], image: Path, initrd: Path, timeout: float, smp: int,
                mem_mb: int, stream: bool, accel: str) -> GuestResult:
    RUNS.mkdir(parents=True, exist_ok=True)
    script = RUNS / f"run-{os.getpid()}-{secrets.token_hex(4)}.sh"
    script.write_text(
        "cd " + shlex.quote(str(ROOT)) + " || exit 125\n"
        "echo " + BEGIN.replace("BEGIN", "CMD") + "\n"
        "exec " + shlex.join(argv) + "\n"
    )
    try:
        return _boot(argv, qemu_argv(image, initrd, _cmdline(f"tcpzoo.run={script}"), smp,
                                     mem_mb, accel), timeout, stream)
    finally:
        script.unlink(missing_ok=True)


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL when the parent dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _boot(argv: list[str], qemu: list[str], timeout: float, stream: bool) -> GuestResult:
    start = time.monotonic()
    cmd_marker = BEGIN.replace("BEGIN", "CMD")
    proc = subprocess.Popen(
        qemu, preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads started here
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = bytearray()
    pending = b""
    boot_s = 0.0
    in_cmd = False
    rc: int | None = None
    out_lines: list[str] = []
    try:
        while rc is None:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise VmError(f"guest timed out after {timeout:.0f}s; console tail:\n"
                              + buf[-4000:].decode(errors="replace"))
            if not sel.select(min(left, 1.0)):
                if proc.poll() is not None:
                    break
                continue
            chunk = proc.stdout.read(65536)
            if not chunk:
                if proc.poll() is not None or chunk == b"":
                    break
                continue
            buf += chunk
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                if not in_cmd:
                    if line.endswith(cmd_marker):
                        in_cmd = True
                        boot_s = time.monotonic() - start
                    continue
                m = END_RE.search(line)
                if m:
                    head = line[: m.start()]
                    if head:
                        out_lines.append(head)
                        if stream:
                            print(head, flush=True)
                    rc = int(m.group(1))
                    break
                out_lines.append(line)
                if stream:
                    print(line, flush=True)
        # Let the guest power itself off; bounded.
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sel.close()
    if rc is None:
        raise VmError("guest exited before the command finished; console tail:\n"
                      + buf[-4000:].decode(errors="replace"))
    return GuestResult(argv, rc, "\n".join(out_lines) + ("\n" if out_lines else ""), boot_s,
                       time.monotonic() - start, buf.decode(errors="replace"))


def shell(smp: int = 2, mem_mb: int = 2048) -> int:
    """An interactive guest (serial console on this terminal); exit the shell to power off."""
    _, image, _, initrd = prepare()
    return subprocess.call(qemu_argv(image, initrd, _cmdline(), smp, mem_mb,
                                     choose_accel(image, initrd)))


# -- CLI -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.vm``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench.vm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run a command in the guest")
    p_test = sub.add_parser("test", help="run tests/kernel in the guest")
    p_bench = sub.add_parser("bench", help="python -m bench --vm [ARGS]")
    p_shell = sub.add_parser("shell", help="interactive guest shell")
    sub.add_parser("build", help="build modules, vmlinux and initramfs")
    for p in (p_run, p_test, p_shell):
        p.add_argument("--smp", type=int, default=2)
        p.add_argument("--mem", type=int, default=2048, help="guest memory in MiB")
    for p in (p_run, p_test):
        p.add_argument("--timeout", type=float, default=900.0)
    p_run.add_argument("command", nargs=argparse.REMAINDER)
    p_test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    p_bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through run_in_guest, which kills QEMU

    signal.signal(signal.SIGTERM, on_term)
    try:
        if args.cmd == "build":
            ver, image, pvh, initrd = prepare()
            print(f"kernel {ver}: {image} ({'PVH ELF' if pvh else 'bzImage'}), {initrd}")
            return 0
        if args.cmd == "shell":
            return shell(args.smp, args.mem)
        if args.cmd == "bench":
            from bench import cli

            rest = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
            return cli.main(["--vm", *rest])
        if args.cmd == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("run: give a command after --")
        else:
            extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
            paths = [] if any(not a.startswith("-") for a in extra) else ["tests/kernel"]
            command = [str(PYTHON), "-m", "pytest", *paths, "-q", *extra]
        res = run_in_guest(command, args.timeout, args.smp, args.mem, stream=True)
        print(f"[bench.vm] boot {res.boot_s:.1f}s, total {res.total_s:.1f}s, rc {res.returncode}",
              file=sys.stderr)
        return res.returncode
    except VmError as exc:
        print(f"bench.vm: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
