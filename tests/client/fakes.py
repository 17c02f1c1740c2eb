"""A stand-in daemon for what the real one cannot do on demand.

The real ipamd cannot be told to answer `unavailable`, to hang, to hang up in
the middle of a call or to send garbage; `FakePeer` can, on a real Unix socket
in a thread. It reads requests with the project's own sans-IO framing.

Behaviours:
  "errors"   answers method "fail" with the error {"code", "name", "message"} in
             its params, anything else with {"echo": method}
  "silent"   accepts and reads, never answers
  "hangup"   reads one request, then closes the connection
  "garbage"  answers the first request with bytes that are not msgpack
  "stranger" answers the first request on a msgid nobody used
  "reverse"  holds requests until REVERSE_BATCH have come, then answers them
             {"echo": method}, last first
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

from ipamd.wire.protocol import NEED_DATA, Request, RpcConnection, encode

REVERSE_BATCH = 10


class FakePeer:
    def __init__(self, path: Path, behaviour: str) -> None:
        self.path = path
        self.behaviour = behaviour
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.requests: list[Request] = []
        self.got_request = threading.Event()
        self.connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._held: list[Request] = []

    def start(self) -> FakePeer:
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        rpc = RpcConnection("server")
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                rpc.receive_data(data)
                while (event := rpc.next_event()) is not NEED_DATA:
                    if not isinstance(event, Request):
                        continue
                    self.requests.append(event)
                    self.got_request.set()
                    if not self._answer(conn, rpc, event):
                        conn.close()
                        return
        except OSError:
            return

    def _answer(self, conn: socket.socket, rpc: RpcConnection, request: Request) -> bool:
        """Act on one request; False to hang up."""
        if self.behaviour == "silent":
            return True
        if self.behaviour == "hangup":
            return False
        if self.behaviour == "garbage":
            conn.sendall(b"\xc1" * 16)  # 0xc1 is the one byte msgpack never uses
            return True
        if self.behaviour == "reverse":
            self._held.append(request)
            if len(self._held) == REVERSE_BATCH:
                for held in reversed(self._held):
                    reply = {"echo": held.method}
                    conn.sendall(rpc.send_response(held.msgid, None, reply))
                self._held.clear()
            return True
        if self.behaviour == "stranger":
            conn.sendall(encode([1, request.msgid + 1000, None, "who asked?"]))
            return True
        if request.method == "fail":
            error = dict(request.params)
            conn.sendall(encode([1, request.msgid, error, None]))
        else:
            conn.sendall(rpc.send_response(request.msgid, None, {"echo": request.method}))
        return True
