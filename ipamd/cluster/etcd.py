"""The etcd seam: every etcd call, in one worker thread.

The client is etcd3gw (OpenStack's client of etcd's JSON gateway, /v3/ since
etcd 3.4): plain HTTP(S) through `requests`, no gRPC stack, so it installs
anywhere; it blocks, so, as LevelDB's commits do, its calls run in one thread
of our own and the event loop only awaits their outcome. (aetcd speaks gRPC
but is asyncio-only; python-etcd3 is unmaintained.) We use etcd3gw for the
transport, TLS and error mapping, and write the few request bodies ourselves:
we need the revisions of every answer, which its helpers drop.

Rules it keeps:
- Nothing here takes a lock in etcd or builds consensus of its own: every
  exclusive write is one transaction compared on a key's create revision
  (create-if-absent: create_revision == 0; release: == the fencing token).
- etcd3gw's and requests' exceptions are translated where they enter:
  `EtcdUnreachable` (no endpoint answered) or `EtcdError` (one answered no).
- Several endpoints: the one that last answered is tried first, then the rest.
- `reachable` and `unreachable_since` say what the last call found.
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import trio
from etcd3gw import exceptions as etcd_exceptions
from etcd3gw.client import Etcd3Client

T = TypeVar("T")

# A healthy member answers in milliseconds; a stopped or partitioned one never
# does: after this, the next endpoint is tried.
REQUEST_TIMEOUT_S = 2.0
# etcd 3.4 serves the gateway at /v3/ (and the deprecated /v3beta/); 3.5 and
# 3.6 at /v3/ only. Given, not discovered: discovery costs a request per client.
API_PATH = "/v3/"


class EtcdUnreachable(Exception):
    """No endpoint answered."""


class EtcdError(Exception):
    """An endpoint answered with an error."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _range_end(prefix: str) -> str:
    """The end of the range of keys starting with `prefix` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # prefixes here end in "/", never in 0xff
    return _b64(bytes(raw))


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw["key"]).decode(),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


class EtcdSession:
    """Blocking calls to etcd. Used from the worker thread only."""

    def __init__(
        self,
        endpoints: tuple[str, ...],
        *,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.endpoints = endpoints
        self._clients: list[Etcd3Client] = []
        for endpoint in endpoints:
            url = urlsplit(endpoint)
            self._clients.append(
                Etcd3Client(
                    host=url.hostname or "localhost",
                    port=url.port or 2379,
                    protocol=url.scheme or "http",
                    ca_cert=ca,
                    cert_cert=cert,
                    cert_key=key,
                    timeout=timeout,
                    api_path=API_PATH,
                )
            )
        self._current = 0

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        failures: list[str] = []
        count = len(self._clients)
        for step in range(count):
            index = (self._current + step) % count
            client = self._clients[index]
            try:
                answer = client.post(client.get_url(path), json=body)
            except (
                etcd_exceptions.ConnectionFailedError,
                etcd_exceptions.ConnectionTimeoutError,
                requests.exceptions.RequestException,
            ) as e:
                failures.append(f"{self.endpoints[index]}: {_short(e)}")
                continue
            except etcd_exceptions.Etcd3Exception as e:
                if _is_unavailable(e):  # no leader, or the member is out of the cluster
                    failures.append(f"{self.endpoints[index]}: {_short(e)}")
                    continue
                raise EtcdError(f"{self.endpoints[index]}: {_short(e)}") from e
            self._current = index
            return answer
        raise EtcdUnreachable("; ".join(failures))

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        answer = self._post("/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        answer = self._post("/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        return [_kv(raw) for raw in answer.get("kvs") or []]

    def revision(self) -> int:
        """The store's current revision: one more for every write ever made."""
        answer = self._post("/kv/range", {"key": _b64("\0"), "count_only": True})
        return int(answer["header"]["revision"])

    # -- writes ----------------------------------------------------------------------

    def create(self, key: str, value: bytes, lease: int = 0) -> tuple[bool, KeyValue | None]:
        """Create `key` if absent. (True, the new key) or (False, the key that was there)."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        answer = self._post(
            "/kv/txn",
            {
                "compare": [
                    {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                ],
                "success": [{"request_put": put}],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        revision = int(answer["header"]["revision"])
        if answer.get("succeeded"):
            return True, KeyValue(key, value, revision, revision, lease)
        kvs = (answer.get("responses") or [{}])[0].get("response_range", {}).get("kvs") or []
        return False, _kv(kvs[0]) if kvs else None

    def create_all(self, items: list[tuple[str, bytes]]) -> tuple[bool, int, list[KeyValue]]:
        """Create every key if none exists, in one transaction: (True, the
        revision they were created at, []) or (False, 0, keys that existed).

        The keys that existed are read after a failed transaction, not by its
        failure branch: that branch costs etcd about a fifth more per claim
        that succeeds, and claims nearly always do. A key may change between
        the two requests; callers only learn from the answer which keys to
        try again."""
        compare = [
            {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
            for key, _ in items
        ]
        answer = self._post(
            "/kv/txn",
            {
                "compare": compare,
                "success": [
                    {"request_put": {"key": _b64(key), "value": _b64(value)}}
                    for key, value in items
                ],
            },
        )
        if answer.get("succeeded"):
            return True, int(answer["header"]["revision"]), []
        ranges = self._post(
            "/kv/txn", {"success": [{"request_range": {"key": _b64(key)}} for key, _ in items]}
        )
        existing = [
            _kv(raw)
            for response in ranges.get("responses") or []
            for raw in response.get("response_range", {}).get("kvs") or []
        ]
        return False, 0, existing

    def put(self, key: str, value: bytes, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self._post("/kv/put", body)

    def delete_if_created(self, key: str, create_revision: int, absent: str = "") -> bool:
        """Delete `key` if its create revision is still `create_revision` (the
        fencing token) and, when given, the key `absent` does not exist."""
        compare = [
            {
                "key": _b64(key),
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": create_revision,
            }
        ]
        if absent:
            compare.append(
                {"key": _b64(absent), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
            )
        answer = self._post(
            "/kv/txn",
            {"compare": compare, "success": [{"request_delete_range": {"key": _b64(key)}}]},
        )
        return bool(answer.get("succeeded"))

    def grant(self, ttl: int) -> int:
        answer = self._post("/lease/grant", {"TTL": ttl, "ID": 0})
        return int(answer["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's TTL after refreshing it; 0 or less once it has expired."""
        answer = self._post("/lease/keepalive", {"ID": lease})
        return int(answer.get("result", {}).get("TTL", -1))


def _short(error: Exception) -> str:
    text = " ".join(str(a) for a in error.args if a) or type(error).__name__
    said = _etcd_message(getattr(error, "detail_text", None))
    if said:  # etcd's own words ("etcdserver: too many operations in txn request")
        text = f"{text}: {said}"
    return text[:200]


def _etcd_message(body: Any) -> str:
    """The message in an error answer's body (the gateway's JSON), if any."""
    if not isinstance(body, str):
        return ""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.strip()[:120]
    if not isinstance(answer, dict):
        return ""
    return str(answer.get("message") or answer.get("error") or "")


def _is_unavailable(error: Exception) -> bool:
    text = _short(error).lower()
    return any(
        sign in text
        for sign in ("no leader", "leader changed", "timed out", "unavailable", "not capable")
    )


class EtcdWorker:
    """One thread that runs `EtcdSession` calls in order; trio awaits them."""

    def __init__(self, session: EtcdSession) -> None:
        self.session = session
        self.reachable: bool | None = None  # None: not asked yet
        self.unreachable_since: float | None = None  # unix time of the first failure
        self.last_error = ""
        self.calls = 0
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ipamd-etcd", daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the worker thread. A cancelled caller loses only the
        answer: the call itself runs to its end (as LevelDB's commits do)."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[Any] = []

        def job() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as e:
                outcome.append((False, e))
            with contextlib.suppress(trio.RunFinishedError):  # the daemon has stopped
                token.run_sync_soon(done.set)

        self._jobs.put(job)
        await done.wait()
        ok, value = outcome[0]
        self.calls += 1
        if ok:
            self.reachable, self.unreachable_since, self.last_error = True, None, ""
            return value  # type: ignore[no-any-return]
        if isinstance(value, EtcdUnreachable):
            if self.reachable is not False or self.unreachable_since is None:
                self.unreachable_since = time.time()
            self.reachable = False
            self.last_error = str(value)
        raise value

    def unreachable_text(self) -> str:
        since = self.unreachable_since
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "the start"
        return f"etcd is unreachable since {when} ({self.last_error or 'no answer'})"

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=REQUEST_TIMEOUT_S * 2)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()
