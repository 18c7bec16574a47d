"""QEMU: boot the guest, run one command in it, power it off; every wait is bounded.

:func:`run_in_guest` boots the kernel and initramfs of :mod:`bench.vm_image` (building
the modules first), runs a command from the project root inside the guest and gives
its exit status and output (stdout and stderr together, off the serial console). QEMU
is killed when the command does not finish in time or when this process dies.
:func:`shell` is an interactive guest on this terminal.
"""

from __future__ import annotations

import ctypes
import os
import platform
import secrets
import selectors
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.vm_image import BEGIN, END_RE, prepare
from bench.vm_kernel import CACHE, ROOT, VmError

RUNS = CACHE / "runs"


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
