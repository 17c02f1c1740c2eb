"""The floor for bench_daemon.py: the least a Python msgpack-RPC daemon can do.

A bare trio server on a Unix stream socket, shaped like ipamd's server and
nothing more: one task per connection, a msgpack `Unpacker` per connection,
and for every request `[0, msgid, method, params]` the reply
`[1, msgid, None, params]`. It validates nothing, stores nothing and syncs
nothing, so whatever rate it reaches with a given set of clients is what no
Python daemon on this socket stack can beat; ipamd's rate divided by it says
how much of the budget ipamd's real work takes.

With `--epoll` it serves the way ipamd's server does instead (ipamd/daemon/server.py):
every connection in one private epoll set that a single trio task waits on and
serves in rounds, rather than a task per connection. The first is the floor
the benchmark's target is set against; the second is the floor for ipamd's
actual I/O design, so that the ratio to it says how much the real work costs.

Run: `python benchmarks/echo_server.py [--epoll] SOCKET`; it prints "ready" on
stdout once listening and stops on SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

import msgpack
import trio

# Same read size as ipamd's server (server.RECEIVE_BYTES).
RECEIVE_BYTES = 64 << 10
LISTEN_BACKLOG = 1024


async def handle(stream: trio.SocketStream) -> None:
    unpacker = msgpack.Unpacker(raw=False)
    packb = msgpack.packb
    try:
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return
            unpacker.feed(data)
            replies = [packb([1, frame[1], None, frame[3]]) for frame in unpacker]
            if replies:
                await stream.send_all(b"".join(replies))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


class EpollEcho:
    """Every connection in one level-triggered epoll set, served in rounds by one task."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.conns: dict[int, tuple[socket.socket, msgpack.Unpacker]] = {}

    async def accept(self, listener: trio.socket.SocketType) -> None:
        while True:
            accepted, _ = await listener.accept()
            sock = socket.socket(fileno=accepted.detach())
            sock.setblocking(False)
            self.conns[sock.fileno()] = (sock, msgpack.Unpacker(raw=False))
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    async def serve(self) -> None:
        packb = msgpack.packb
        while True:
            ready = self.epoll.poll(0, 1024)
            if not ready:
                await trio.lowlevel.wait_readable(self.epoll.fileno())
                continue
            for fd, _ in ready:
                sock, unpacker = self.conns[fd]
                data = os.read(fd, RECEIVE_BYTES)
                if not data:
                    self.epoll.unregister(fd)
                    del self.conns[fd]
                    sock.close()
                    continue
                unpacker.feed(data)
                replies = [packb([1, frame[1], None, frame[3]]) for frame in unpacker]
                if replies:
                    sock.sendall(b"".join(replies))  # tiny answers: the socket has room
            await trio.lowlevel.checkpoint()


async def serve(path: str, epoll: bool) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(LISTEN_BACKLOG)
    listener = trio.SocketListener(sock)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if epoll:
                echo = EpollEcho()
                nursery.start_soon(echo.accept, sock)
                nursery.start_soon(echo.serve)
            else:
                nursery.start_soon(trio.serve_listeners, handle, [listener])
            print("ready", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main() -> int:
    args = sys.argv[1:]
    epoll = args[:1] == ["--epoll"]
    if epoll:
        args = args[1:]
    if len(args) != 1:
        print("usage: echo_server.py [--epoll] SOCKET", file=sys.stderr)
        return 64
    path = args[0]
    if os.path.exists(path):
        os.unlink(path)
    try:
        trio.run(serve, path, epoll)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
