"""The few ways bytes move between a socket and the protocol core, each written once.

- :mod:`servers.drivers.blocking`: recv, core, send on a blocking socket; shared by
  the iterative, thread, process and greenlet models.
- :mod:`servers.drivers.readiness`: one non-blocking loop over a pluggable poller
  (:mod:`servers.drivers.pollers`: select, poll, epoll level- or edge-triggered).
- :mod:`servers.drivers.aio`: an ``asyncio.BufferedProtocol`` adapter (stdlib loop, uvloop).
"""
