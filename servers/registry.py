"""The registry of backends: what each server is, and the argv that starts it.

The harness and the tests know a server only by its entry here: they start
``python <argv> --proto P --port 0 ...`` and talk to it over sockets, so a C
server or a kernel module is a row like any other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Entry:
    """One server of the zoo."""

    name: str
    module: str
    model: str  # process, thread, event loop, coroutine, kernel
    multiplexer: str  # blocking, select, poll, epoll, io_uring, libuv, ...
    description: str
    limits: str = ""
    args: tuple[str, ...] = ()
    sendfile: bool = False
    concurrent: bool = True  # serves many clients at once
    event_driven: bool = False
    kind: str = "python"  # python, native, kernel
    protocols: tuple[str, ...] = ("echo", "http")
    static_files: bool = True
    # The guestbook's Redis connections in this model (its pooling choice); "": none.
    guestbook: str = ""
    # The most requests it serves at once whatever the connections; 0: one per connection.
    max_in_flight: int = 0
    tags: tuple[str, ...] = field(default=())

    @property
    def argv(self) -> list[str]:
        """The arguments after ``python`` that start this server."""
        return ["-m", self.module, *self.args]

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["argv"] = self.argv
        for key in ("args", "protocols", "tags"):
            data[key] = list(data[key])
        return data


ENTRIES: tuple[Entry, ...] = (
    Entry("iterative", "servers.iterative", "process", "blocking",
          "one connection at a time on the main thread",
          limits="serves one client at a time; the others wait in the listen backlog",
          sendfile=True, concurrent=False,
          guestbook="one Redis connection for the process, blocking",
          max_in_flight=1),
    Entry("threaded", "servers.threaded", "thread", "blocking",
          "a thread per connection, blocking sockets",
          limits="a thread (256 KiB stack) per client; the GIL serialises the Python work; "
                 "thousands of clients leaving at once can stall it for seconds",
          sendfile=True,
          guestbook="a blocking Redis connection per client thread, opened on first use"),
    Entry("epoll", "servers.epoll_raw", "event loop", "epoll",
          "single-threaded readiness loop on select.epoll, level-triggered",
          limits="one core per process (--workers N for more)",
          sendfile=True, event_driven=True,
          guestbook="a pool of up to --backend-pool non-blocking Redis connections in the "
                    "same poller, one call on each at a time, calls beyond waiting FIFO"),
    Entry("epoll-et", "servers.epoll_raw", "event loop", "epoll (edge-triggered)",
          "the epoll loop with EPOLLET: every ready descriptor drained until EAGAIN",
          limits="one core per process (--workers N for more)",
          args=("--edge",), sendfile=True, event_driven=True,
          guestbook="a pool of up to --backend-pool non-blocking Redis connections in the "
                    "same poller, one call on each at a time, calls beyond waiting FIFO"),
    Entry("asyncio", "servers.asyncio_srv", "event loop", "epoll (asyncio selector)",
          "asyncio.BufferedProtocol on the stdlib event loop",
          limits="one core per process (--workers N for more)",
          args=("--loop", "asyncio"), sendfile=True, event_driven=True,
          guestbook="a pool of up to --backend-pool Redis protocols on the same loop, "
                    "one call on each at a time, calls beyond it queued FIFO"),
    Entry("uvloop", "servers.asyncio_srv", "event loop", "libuv (epoll)",
          "the same asyncio.BufferedProtocol on uvloop (libuv)",
          limits="one core per process (--workers N for more); files sent by read+write",
          args=("--loop", "uvloop"), sendfile=False, event_driven=True,
          guestbook="a pool of up to --backend-pool Redis protocols on the same loop, "
                    "one call on each at a time, calls beyond it queued FIFO"),
    Entry("forking", "servers.forking", "process", "blocking",
          "fork() a child per connection; the child runs the blocking driver",
          limits="a process creation per client; children reaped on SIGCHLD; "
                 "on stop each child finishes its response within the grace",
          sendfile=True,
          guestbook="a blocking Redis connection per child, opened on first use"),
    Entry("prefork", "servers.prefork", "process", "blocking",
          "--workers N (default: CPU count) processes accepting on one shared listener, "
          "a fixed pool of --threads (default 128) threads in each",
          limits="workers x threads clients served at once, as many again queued, the rest "
                 "wait in the backlog; a dead worker is replaced within a second",
          sendfile=True,
          guestbook="a blocking Redis connection per pool thread of each worker"),
    Entry("threadpool", "servers.threadpool", "thread", "blocking",
          "a fixed pool of --threads N (default 256) threads fed by a bounded queue",
          limits="N clients served at once and N queued (--queue); past that the acceptor "
                 "stops and new clients wait in the listen backlog",
          sendfile=True,
          guestbook="a blocking Redis connection per pool thread",
          max_in_flight=256),
    Entry("select", "servers.select_srv", "event loop", "select",
          "the shared readiness loop on select.select, level-triggered",
          limits="descriptors above FD_SETSIZE-1 (1023) cannot be watched: such a connection "
                 "is closed at once (logged once) while the others are served; O(n) per "
                 "wake-up; one core per process (--workers N for more)",
          sendfile=True, event_driven=True,
          guestbook="a pool of up to --backend-pool non-blocking Redis connections in the "
                    "same poller, one call on each at a time, calls beyond waiting FIFO"),
    Entry("poll", "servers.poll_srv", "event loop", "poll",
          "the shared readiness loop on select.poll, level-triggered",
          limits="the interest array crosses into the kernel on every wake-up (O(n)); "
                 "one core per process (--workers N for more)",
          sendfile=True, event_driven=True,
          guestbook="a pool of up to --backend-pool non-blocking Redis connections in the "
                    "same poller, one call on each at a time, calls beyond waiting FIFO"),
    Entry("trio", "servers.trio_srv", "coroutine", "epoll (trio)",
          "its own accept loop, a task per connection, cancel scopes for timeouts "
          "and shutdown",
          limits="one core per process (--workers N for more); files by sendfile(2) "
                 "after wait_writable",
          sendfile=True, event_driven=True,
          guestbook="a pool of up to --backend-pool trio streams per run, used by the "
                    "connection's task one call at a time, calls beyond it queued FIFO"),
    Entry("gevent", "servers.gevent_srv", "greenlet", "libev (epoll)",
          "gevent StreamServer, a greenlet per connection running the blocking driver; "
          "no monkey-patching",
          limits="one core per process (--workers N for more); gevent sends files by "
                 "cooperative read+send",
          sendfile=False, event_driven=True,
          guestbook="a cooperative (gevent) Redis connection per client greenlet"),
    Entry("io_uring", "servers.io_uring_srv", "completion loop", "io_uring",
          "accept, recv and send submitted to io_uring (uring-api binding) and handled on "
          "completion: multishot accept, a multishot recv per connection on a shared "
          "provided-buffer ring (16 MiB)",
          limits="needs io_uring (probed at start: skipped with the reason if unavailable; "
                 "single-shot recv where the kernel lacks multishot); files by read + send, "
                 "both on the ring; one core per process (--workers N for more)",
          sendfile=False, event_driven=True,
          guestbook="a pool of up to --backend-pool Redis connections per loop whose "
                    "connect, send and recv are submitted to the same ring, one call on "
                    "each at a time, calls beyond waiting FIFO"),
    Entry("io_uring-single", "servers.io_uring_srv", "completion loop", "io_uring",
          "the io_uring loop with a single-shot recv into a buffer per connection, "
          "re-armed after each completion",
          limits="as io_uring, plus an 8 KiB receive buffer per open connection "
                 "(80 MiB at 10,000 clients)",
          args=("--recv", "single"), sendfile=False, event_driven=True,
          guestbook="a pool of up to --backend-pool Redis connections per loop whose "
                    "connect, send and recv are submitted to the same ring, one call on "
                    "each at a time, calls beyond waiting FIFO"),
    Entry("c-epoll", "servers.c_epoll", "event loop", "epoll",
          "a small C epoll server (zoo_cepoll, servers/native/cepoll.c): the native "
          "user-space ceiling the Python servers and the kernel modules are measured against",
          limits="no --root (static files); "
                 "one core per process (--workers N for more)",
          event_driven=True, kind="native", static_files=False,
          guestbook="a pool of up to --backend-pool non-blocking Redis connections in the "
                    "same epoll (RESP in C), one call on each at a time, calls beyond "
                    "waiting FIFO"),
    Entry("kecho", "servers.kmod_launch", "kernel", "in-kernel, CMWQ (unbound workqueue)",
          "kmod/kecho.ko: in-kernel echo, a work item per connection on an unbound workqueue",
          limits="needs root and a kernel that loads kmod/*.ko (python -m bench --vm runs "
                 "it in a QEMU guest), else skipped; at most 512 connections served at once "
                 "(workqueue max_active), the rest wait",
          args=("--module", "kecho"), concurrent=True, kind="kernel", protocols=("echo",),
          static_files=False),
    Entry("kecho-kthread", "servers.kmod_launch", "kernel", "in-kernel, kthread per connection",
          "kmod/kecho.ko mode=kthread: in-kernel echo, a kernel thread per connection",
          limits="needs root and module loading; a kthread per client",
          args=("--module", "kecho-kthread"), kind="kernel", protocols=("echo",),
          static_files=False),
    Entry("khttpd", "servers.kmod_launch", "kernel", "in-kernel, CMWQ (unbound workqueue)",
          "kmod/khttpd.ko: in-kernel HTTP/1.1 (GET / the benchmark page, keep-alive, 400/404)",
          limits="needs root and module loading; serves only the benchmark page",
          args=("--module", "khttpd"), kind="kernel", protocols=("http",),
          static_files=False),
)

BY_NAME: dict[str, Entry] = {entry.name: entry for entry in ENTRIES}


def get(name: str) -> Entry:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no server named {name!r}; known: {', '.join(BY_NAME)}") from None
