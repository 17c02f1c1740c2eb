"""The floor for bench_daemon.py: the least a Python msgpack-RPC daemon can do.

A bare trio server on a Unix stream socket, shaped like ipamd's server and
nothing more: one task per connection, a msgpack `Unpacker` per connection,
and for every request `[0, msgid, method, params]` the reply
`[1, msgid, None, params]`. It validates nothing, stores nothing and syncs
nothing, so whatever rate it reaches with a given set of clients is what no
Python daemon on this socket stack can beat; ipamd's rate divided by it says
how much of the budget ipamd's real work takes.

Run: `python benchmarks/echo_server.py SOCKET`; it prints "ready" on stdout
once listening and stops on SIGTERM.
"""

from __future__ import annotations

import os
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


async def serve(path: str) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(LISTEN_BACKLOG)
    listener = trio.SocketListener(sock)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, [listener])
            print("ready", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: echo_server.py SOCKET", file=sys.stderr)
        return 64
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    try:
        trio.run(serve, path)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
