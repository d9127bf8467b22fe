"""Relay a listening socket inherited from the parent to a port in this process's namespace.

tests/milvus.py runs the Milvus server in a network namespace of its own (it listens on every
interface and cannot be told otherwise), creates a listening socket on the host's loopback,
and starts this script inside the server's namespace (`nsenter --net`) with that socket as
file descriptor `listen_fd`: each connection accepted there is copied both ways to
127.0.0.1:`port` inside the namespace. So the server is reachable from this machine's loopback
only, at one port, and from nowhere else.
"""

from __future__ import annotations

import asyncio
import socket
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _relay(listen_fd: int, port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    listener = socket.socket(fileno=listen_fd)
    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_relay(int(sys.argv[1]), int(sys.argv[2])))
