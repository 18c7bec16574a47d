"""``python -m bench.vm``: the QEMU guest from the command line.

The host cannot load modules, so the kernel servers in ``kmod/`` are built against the
installed Debian kernel (:mod:`bench.vm_kernel`) and exercised in a guest that boots
that same kernel from a busybox initramfs and sees the host's tree over 9p
(:mod:`bench.vm_image`), under QEMU (:mod:`bench.vm_qemu`; its
:func:`~bench.vm_qemu.run_in_guest` is the library entry point)::

    python -m bench.vm run [--timeout S] [--smp N] [--mem MB] -- CMD...
    python -m bench.vm test      # kernel conformance suite in the guest
    python -m bench.vm bench [ARGS]  # = python -m bench --vm [ARGS]: kernel servers
                                     # against c-epoll, CPU per request for every row
    python -m bench.vm shell     # interactive guest shell (serial console)
    python -m bench.vm build     # modules + initramfs + vmlinux only
"""

from __future__ import annotations

import argparse
import signal
import sys

from bench.vm_image import prepare
from bench.vm_kernel import ROOT, VmError
from bench.vm_qemu import run_in_guest, shell

PYTHON = ROOT / ".venv" / "bin" / "python"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.vm``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench.vm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run a command in the guest")
    p_test = sub.add_parser("test", help="run tests/kernel in the guest")
    # every flag after "bench" is python -m bench's, --help included
    p_bench = sub.add_parser("bench", help="python -m bench --vm [ARGS]", add_help=False)
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
    # A passed-through flag before the first plain word (bench --quick, test -x PATH) is
    # not the REMAINDER's: parse_known_args keeps it, in order, ahead of the rest.
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.cmd not in ("test", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")

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

            return cli.main(["--vm", *_passed(unknown, args.bench_args)])
        if args.cmd == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("run: give a command after --")
        else:
            extra = _passed(unknown, args.pytest_args)
            named = any((ROOT / a.split("::")[0]).exists() for a in extra if a[:1] != "-")
            paths = [] if named else ["tests/kernel"]
            command = [str(PYTHON), "-m", "pytest", *paths, "-q", *extra]
        res = run_in_guest(command, args.timeout, args.smp, args.mem, stream=True)
        print(f"[bench.vm] boot {res.boot_s:.1f}s, total {res.total_s:.1f}s, rc {res.returncode}",
              file=sys.stderr)
        return res.returncode
    except VmError as exc:
        print(f"bench.vm: {exc}", file=sys.stderr)
        return 2


def _passed(flags: list[str], rest: list[str]) -> list[str]:
    """What goes on to pytest or python -m bench: the flags argparse did not know, then
    the remainder without a leading ``--``."""
    args = [*flags, *rest]
    return args[1:] if args[:1] == ["--"] else args


if __name__ == "__main__":
    sys.exit(main())
