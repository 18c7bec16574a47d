"""The server on another host, over one channel: ``python -m bench.remote_server SPEC``.

Harness side, :func:`start` runs this module on the server host through the host's
command line (``ssh`` or ``ip netns exec``, :mod:`bench.remote`) and gives a
:class:`RemoteServer`, what the runner needs of :class:`bench.runner.Server`.

Server host side, :func:`serve` is a small wrapper: it starts the server with the
runner's own :func:`bench.runner.start_server` (:mod:`bench.server_process`: the
readiness line, the skip and the stop checks are the local ones), reports ``listening on
HOST:PORT``, the server's pid and network namespace as a JSON line, and stops it
(SIGTERM, then the checks for leftovers) when the harness writes ``stop``. When its standard input
ends without ``stop`` (the SSH session was lost, the harness died), or on SIGHUP or
SIGTERM, it stops the server all the same: nothing is left running. The file workload's
``--root`` is replaced by files generated on the server host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Protocol

from bench import runner, server_process

SSH_EXTRA_S = 15.0  # on top of the server's readiness timeout: ssh log-in and Python start
STOP_EXTRA_S = 10.0  # on top of the stop grace: the wrapper's answer over ssh


class Where(Protocol):
    """A host as bench.remote describes it: its label, its Python, its command line."""

    label: str
    python: str

    def argv(self, command: list[str]) -> list[str]: ...


class RemoteServer:
    """A server started on another host by the ``serve`` wrapper over one channel
    (ssh or ip netns exec); what the runner needs of :class:`bench.runner.Server`."""

    def __init__(self, host: Where, proc: subprocess.Popen[str], stderr_path: str) -> None:
        self.where = host
        self.proc = proc
        self.stderr_path = stderr_path
        self.host = ""
        self.port = 0
        self.pid = 0
        self.net_ns: str | None = None  # the server process's network namespace
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._exit_code: int | None = None
        self._stopped: str | None = None
        self._reader = threading.Thread(target=self._read, name="remote-server", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "exited":
                self._exit_code = int(event["code"])
            self._events.put(event)
        self._events.put(None)  # the channel closed

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The wrapper's next event; None when the channel closed or time ran out."""
        try:
            return self._events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def stderr_tail(self, lines: int = 3) -> str:
        return server_process.file_tail(self.stderr_path, lines)

    def alive(self) -> bool:
        return self._exit_code is None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self._exit_code

    def stop(self, grace: float = server_process.STOP_GRACE) -> str:
        """SIGTERM through the channel; the wrapper's outcome (as the runner words it)."""
        outcome = None
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            deadline = time.monotonic() + grace + STOP_EXTRA_S
            while outcome is None:
                event = self.next_event(deadline - time.monotonic())
                if event is None:
                    break
                if event.get("event") == "stopped":
                    outcome = str(event["outcome"])
        except (OSError, ValueError):
            pass
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(STOP_EXTRA_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # the channel closes: the wrapper stops the server
            self.proc.wait()
        if outcome is None:
            tail = self.stderr_tail(1)
            outcome = f"stop not confirmed by {self.where.label}" + (f": {tail}" if tail else "")
        with contextlib.suppress(OSError):
            os.unlink(self.stderr_path)
        return outcome


def start(host: Where, spec: dict[str, Any], ready_timeout: float) -> RemoteServer:
    """Start the ``serve`` wrapper on ``host`` and wait for the server's readiness;
    :class:`bench.runner.StartFailure` otherwise."""
    err_fd, err_path = tempfile.mkstemp(prefix="bench-remote-", suffix=".err")
    try:
        proc = subprocess.Popen(
            host.argv([host.python, "-m", "bench.remote_server", json.dumps(spec)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_fd, text=True,
            cwd=runner.REPO, start_new_session=True)
    finally:
        os.close(err_fd)
    server = RemoteServer(host, proc, err_path)
    event = server.next_event(ready_timeout + SSH_EXTRA_S)
    if event and event.get("event") == "ready":
        server.host, server.port, server.pid = event["host"], int(event["port"]), event["pid"]
        server.net_ns = event.get("net_ns")
        return server
    outcome = server.stop(grace=0.5)
    if event and event.get("event") == "failed":
        raise runner.StartFailure(event["reason"], skipped=bool(event["skipped"]))
    tail = server.stderr_tail(2) or outcome
    raise runner.StartFailure(f"{host.label}: the server wrapper did not report: {tail}")


def serve(spec: dict[str, Any]) -> int:
    """The server host's side (see the module doc). Events are JSON lines on stdout."""
    fields = {f.name for f in dataclasses.fields(runner.Target)}
    target = runner.Target(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in spec["target"].items() if k in fields})
    settings = runner.Settings(workers=spec.get("workers"),
                               server_args=tuple(spec.get("server_args", ())))
    extra = list(spec.get("extra", ()))
    stop = threading.Event()

    def emit(**event: Any) -> None:
        with contextlib.suppress(OSError, ValueError):  # the harness may be gone
            print(json.dumps(event), flush=True)

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()  # "stop", or the end of input: the session is gone

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="tcpzoo-remote-files-") as root:
        if "--root" in extra:  # the file workload: this host's own copy of the files
            from bench import files

            files.make_root(root, (int(spec["file_size"]),))
            extra[extra.index("--root") + 1] = root
        try:
            server = runner.start_server(target, spec["protocol"], settings, spec.get("cpus"),
                                         ready_timeout=spec["ready_timeout"], extra=extra)
        except runner.StartFailure as exc:
            emit(event="failed", reason=exc.reason, skipped=exc.skipped)
            return 0
        try:
            net_ns = os.readlink(f"/proc/{server.proc.pid}/ns/net")
        except OSError:
            net_ns = None
        emit(event="ready", host=server.host, port=server.port, pid=server.proc.pid,
             net_ns=net_ns, line=f"listening on {server.host}:{server.port}")
        threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
        reported = False
        while not stop.wait(0.05):
            code = server.proc.poll()
            if code is not None and not reported:
                emit(event="exited", code=code)
                reported = True
        grace = spec.get("grace", server_process.STOP_GRACE)
        emit(event="stopped", outcome=server.stop(grace=grace))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.remote_server SPEC (run by the harness)", file=sys.stderr)
        return 2
    try:
        spec = json.loads(args[0])
    except ValueError as exc:
        print(f"bench.remote_server: SPEC is not JSON: {exc}", file=sys.stderr)
        return 2
    return serve(spec)


if __name__ == "__main__":
    sys.exit(main())
