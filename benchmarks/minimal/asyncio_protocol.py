"""Minimal asyncio echo: a ``BufferedProtocol`` on the stdlib loop or on uvloop."""

import asyncio

from common import listen


class Echo(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(65536)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buf[:nbytes]))


async def main() -> None:
    server = await asyncio.get_running_loop().create_server(Echo, sock=listener)
    await server.serve_forever()


listener, args = listen({"--loop": ["asyncio", "uvloop"]})
if args.loop == "uvloop":
    import uvloop

    uvloop.run(main())
else:
    asyncio.run(main())
