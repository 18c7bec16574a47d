"""Start an in-kernel server (kmod/*.ko) as if it were a server process.

``python -m servers.kmod_launch --module kecho|kecho-bound|kecho-kthread|khttpd --port P``
loads the module with its port and mode parameters (port 0 picks a free port),
waits until the port accepts a connection, prints ``listening on HOST:PORT``,
then waits for SIGINT or SIGTERM and unloads the module. It builds nothing: the
modules come from ``make -C kmod`` for the running kernel.

A module that cannot run here (not root, the module file is missing, the running
kernel refuses to load it: a ``nomodule`` host, another kernel version, the module
already loaded, ...) is :class:`~servers.backend.Unavailable`, reported the way every
server reports it (``skipped: REASON``, exit status
:data:`~servers.backend.EXIT_UNAVAILABLE`); the harness and the tests count it as
skipped, not failed. Other failures exit 1.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from servers.backend import Unavailable, exit_unavailable

KMOD_DIR = Path(__file__).resolve().parent.parent / "kmod"
SYS_FINIT_MODULE = 313  # x86_64
SYS_DELETE_MODULE = 176  # x86_64
READY_TIMEOUT = 10.0
UNLOAD_TIMEOUT = 10.0


@dataclass(frozen=True)
class KernelServer:
    """A kernel module and the parameters that make it one server of the zoo."""

    module: str  # module name as lsmod shows it
    params: tuple[str, ...]
    proto: str


SERVERS: dict[str, KernelServer] = {
    "kecho": KernelServer("kecho", ("mode=wq",), "echo"),
    "kecho-bound": KernelServer("kecho", ("mode=wq", "bound=1"), "echo"),
    "kecho-kthread": KernelServer("kecho", ("mode=kthread",), "echo"),
    "khttpd": KernelServer("khttpd", (), "http"),
}


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def load_module(path: Path, params: list[str]) -> None:
    """finit_module(2) the .ko at ``path`` with ``params``; raises Unavailable or OSError."""
    if os.geteuid() != 0:
        raise Unavailable("loading a kernel module needs root")
    if not path.is_file():
        raise Unavailable(f"{path} not built (run: make -C kmod)")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        rc = _libc().syscall(SYS_FINIT_MODULE, fd, " ".join(params).encode(), 0)
        err = ctypes.get_errno()
    finally:
        os.close(fd)
    if rc != 0:
        reason = os.strerror(err)
        if err == errno.EEXIST:
            raise Unavailable(f"module {path.stem} is already loaded")
        if err in (errno.EPERM, errno.ENOSYS, errno.ENOEXEC, errno.EACCES, errno.EKEYREJECTED,
                   errno.ENOKEY, errno.EINVAL):
            raise Unavailable(f"the running kernel refused {path.name}: {reason}")
        raise OSError(err, f"loading {path.name}: {reason}")


def unload_module(name: str, timeout: float = UNLOAD_TIMEOUT) -> None:
    """delete_module(2) ``name``, retrying while it is busy, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    libc = _libc()
    while True:
        rc = libc.syscall(SYS_DELETE_MODULE, name.encode(), os.O_NONBLOCK)
        err = ctypes.get_errno()
        if rc == 0 or err == errno.ENOENT:
            return
        if err not in (errno.EAGAIN, errno.EBUSY) or time.monotonic() > deadline:
            raise OSError(err, f"unloading {name}: {os.strerror(err)}")
        time.sleep(0.05)


def free_port(host: str) -> int:
    """A port nothing listens on now, from a throw-away bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_accepting(host: str, port: int, timeout: float = READY_TIMEOUT) -> None:
    """Return once ``host:port`` accepts a TCP connection; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} not accepting after {timeout:.0f}s") from exc
            time.sleep(0.02)


def affinity_params() -> list[str]:
    """``cpus=LIST`` when this process is pinned to some CPUs only (taskset, the harness).

    A kernel server is pinned like a process: the module runs its listener and kthread
    workers on the CPUs its launcher may use, and :func:`pin_workqueue` pins its unbound
    workqueue there too.
    """
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) >= (os.cpu_count() or len(mine)):
        return []
    return ["cpus=" + ",".join(map(str, mine))]


def pin_workqueue(name: str) -> None:
    """Pin the module's unbound workqueue (WQ_SYSFS) to this process's CPUs; no-op if
    it is not pinned or the module runs no such workqueue (kthread or bound mode)."""
    path = Path("/sys/devices/virtual/workqueue") / name / "cpumask"
    if not affinity_params() or not path.exists():
        return
    mask = sum(1 << cpu for cpu in os.sched_getaffinity(0))
    words = []
    while True:
        words.append(f"{mask & 0xFFFFFFFF:08x}")
        mask >>= 32
        if not mask:
            break
    path.write_text(",".join(reversed(words)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m servers.kmod_launch",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--module", choices=sorted(SERVERS), required=True)
    parser.add_argument("--proto", choices=("echo", "http"), default=None,
                        help="must match the module's protocol when given")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to check and announce; the module listens on all")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--backlog", type=int, default=None)
    parser.add_argument("--kmod-dir", type=Path, default=KMOD_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load, announce, wait for a stop signal, unload. See the module docstring."""
    # Flags the shared command line gives every server (--workers, --idle-timeout,
    # ...) mean nothing to a kernel module: accepted and ignored.
    args, _ignored = _parser().parse_known_args(argv)
    server = SERVERS[args.module]
    if args.proto is not None and args.proto != server.proto:
        exit_unavailable(f"{args.module} serves {server.proto}, not {args.proto}")

    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    port = args.port or free_port(args.host)
    params = [f"port={port}", *server.params]
    params += affinity_params()
    if args.backlog:
        params.append(f"backlog={args.backlog}")
    try:
        load_module(args.kmod_dir / f"{server.module}.ko", params)
    except Unavailable as exc:
        exit_unavailable(str(exc))
    except OSError as exc:
        print(f"kmod_launch: {exc}", file=sys.stderr)
        return 1

    status = 0
    try:
        pin_workqueue(server.module)
        wait_accepting(args.host, port)
        print(f"listening on {args.host}:{port}", flush=True)
        while not stop["signal"]:
            time.sleep(0.1)  # a signal's handler runs within this sleep
    except (TimeoutError, OSError) as exc:
        print(f"kmod_launch: {exc}", file=sys.stderr)
        status = 1
    finally:
        try:
            unload_module(server.module)
        except OSError as exc:
            print(f"kmod_launch: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
