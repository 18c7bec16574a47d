"""The few ways bytes move between a socket and the protocol core, each written once.

- :mod:`servers.drivers.blocking`: recv, core, send on a blocking socket; shared by
  the iterative, thread, process and greenlet models, through
  :mod:`servers.drivers.blocking_runner` (the accept loop, the open connections a stop
  ends, the worker's Redis connection); :mod:`servers.drivers.thread_pool` is the pool
  of threadpool and prefork, :mod:`servers.drivers.greenlet_bounds` gevent's timeouts.
- :mod:`servers.drivers.readiness`: one non-blocking loop over a pluggable poller
  (:mod:`servers.drivers.pollers`: select, poll, epoll level- or edge-triggered).
- :mod:`servers.drivers.aio`: an ``asyncio.BufferedProtocol`` adapter (stdlib loop, uvloop).
- :mod:`servers.drivers.io_uring`: the io_uring completion loop (multishot or single-shot
  recv), the guestbook's Redis I/O on the same ring.
"""
