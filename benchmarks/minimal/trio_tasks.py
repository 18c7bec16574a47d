"""Minimal trio echo: ``trio.serve_listeners``, a task per connection."""

import trio
from common import listen


async def echo(stream: trio.SocketStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def main() -> None:
    await trio.serve_listeners(echo, [trio.SocketListener(trio.socket.from_stdlib_socket(sock))])


sock, _ = listen()
trio.run(main)
