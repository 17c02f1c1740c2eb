"""Real etcd members and real ipamd hosts for the cluster tests.

`EtcdCluster` starts Debian's etcd (one member, or three for fault tests) on
free loopback ports with data dirs under the test's tmp dir, waits for each
member's READY=1 on a notify socket the test binds (etcd speaks sd_notify),
and ends its members by PID. `Host` is one ipamd process with its own state
dir, socket and `[cluster]` config.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import Daemon, RpcError

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    def __init__(self, base: Path, size: int = 1, extra_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.extra_args = extra_args  # more etcd flags, for every member
        base.mkdir(parents=True, exist_ok=True)
        self.members = [
            Member(
                f"m{i}",
                free_port(),
                free_port(),
                base / f"m{i}.etcd",
                base / f"m{i}.log",
            )
            for i in range(size)
        ]
        self._notify_path = base / "etcd-notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self._notify_path))
        self._first_start = True

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _command(self, member: Member) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            ETCD,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            member.client_url,
            "--advertise-client-urls",
            member.client_url,
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            f"ipamd-test-{os.getpid()}",
            # Small test clusters on a shared CPU: elections a little slower
            # than etcd's defaults, so that a busy machine does not cause them.
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            *self.extra_args,
        ]

    def _spawn(self, member: Member) -> None:
        with open(member.log_path, "ab") as log:
            member.proc = subprocess.Popen(
                self._command(member),
                stdout=log,
                stderr=log,
                env={**os.environ, "NOTIFY_SOCKET": str(self._notify_path)},
            )

    def _wait_ready(self, count: int) -> None:
        self._notify.settimeout(READY_TIMEOUT_S)
        for _ in range(count):
            try:
                data = self._notify.recv(4096)
            except TimeoutError:
                raise TimeoutError(f"etcd did not send READY=1: {self.logs()}") from None
            assert b"READY=1" in data, data

    def start(self) -> EtcdCluster:
        for member in self.members:
            self._spawn(member)
        self._wait_ready(len(self.members))
        return self

    def restart(self, index: int) -> None:
        """Start a member that was killed again (same data dir); wait for READY=1."""
        member = self.members[index]
        assert member.proc is None or member.proc.poll() is not None
        self._spawn(member)
        self._wait_ready(1)

    def kill(self, index: int) -> None:
        proc = self.members[index].proc
        assert proc is not None
        proc.kill()
        proc.wait()

    def signal(self, index: int, signum: int) -> None:
        proc = self.members[index].proc
        assert proc is not None
        proc.send_signal(signum)

    def close(self) -> None:
        for member in self.members:
            proc = member.proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        self._notify.close()

    def logs(self) -> str:
        return "\n".join(
            m.log_path.read_text(errors="replace")[-1500:] for m in self.members if m.log_path
        )

    def etcdctl(self, *args: str, timeout: float = 20.0) -> str:
        result = subprocess.run(
            [ETCDCTL, "--endpoints", ",".join(self.endpoints), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def keys(self, prefix: str) -> list[str]:
        out = self.etcdctl("get", "--prefix", "--keys-only", prefix)
        return [line for line in out.splitlines() if line]

    def get_json(self, key: str) -> Any:
        out = self.etcdctl("get", "--print-value-only", key).strip()
        return json.loads(out) if out else None

    def watch_deleted(self, key: str, *, prefix: bool = False) -> WatchDelete:
        return WatchDelete(self, key, prefix)


class WatchDelete:
    """`etcdctl watch KEY`, started now; `wait(n)` returns once n deletes of
    KEY (or of keys under it, with `prefix`) have happened."""

    def __init__(self, cluster: EtcdCluster, key: str, prefix: bool = False) -> None:
        options = ["--prefix"] if prefix else []
        self.proc = subprocess.Popen(
            [ETCDCTL, "--endpoints", ",".join(cluster.endpoints), "watch", *options, key],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "ETCDCTL_API": "3"},
        )

    def wait(self, count: int = 1, timeout: float = 30.0) -> None:
        # Read the pipe's bytes ourselves: a buffered reader would hold lines
        # that `select` no longer sees.
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        text = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while text.split(b"\n").count(b"DELETE") < count:
                if not selector.select(timeout):
                    raise TimeoutError(f"{count} delete(s) not seen in time: {text!r}")
                data = os.read(fd, 65536)
                if not data:
                    raise RuntimeError("etcdctl watch ended")
                text += data
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@dataclass
class Host:
    """One ipamd process in the cluster."""

    name: str
    daemon: Daemon
    config_text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        with self.daemon.client(timeout=30) as client:
            return client.call(method, params)

    def error(self, method: str, params: dict[str, Any] | None = None) -> RpcError:
        try:
            result = self.call(method, params)
        except RpcError as e:
            return e
        raise AssertionError(f"{method} on {self.name} succeeded: {result!r}")

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def leases(self, network: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = None
        while True:
            params: dict[str, Any] = {"network": network, "limit": 4000}
            if after is not None:
                params["after"] = after
            page = self.call("lease.list", params)
            out += page["leases"]
            after = page.get("next")
            if after is None:
                return out


def cluster_config(
    path: Path,
    etcd: EtcdCluster,
    host: str,
    *,
    prefix: str = "/ipamd",
    lease_ttl: int = 10,
    endpoints: list[str] | None = None,
    **extra: Any,
) -> Path:
    lines = [
        "[cluster]",
        f"endpoints = {json.dumps(endpoints or etcd.endpoints)}",
        f'host = "{host}"',
        f'prefix = "{prefix}"',
        f"lease_ttl = {lease_ttl}",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_hosts(
    base: Path, etcd: EtcdCluster, names: list[str], **config: Any
) -> Iterator[list[Host]]:
    """Start one ipamd per name (all at once, then wait for each); stop them after."""
    hosts: list[Host] = []
    try:
        for name in names:
            directory = base / name
            directory.mkdir(parents=True, exist_ok=True)
            conf = cluster_config(directory / "ipamd.toml", etcd, name, **config)
            daemon = Daemon(
                state_dir=directory / "state", socket=directory / "ipamd.sock", config=conf
            )
            hosts.append(Host(name, daemon.start(wait=False)))
        for host in hosts:
            host.daemon.wait_ready()
        yield hosts
    finally:
        for host in hosts:
            if host.daemon.proc is not None and host.daemon.proc.poll() is None:
                host.daemon.proc.send_signal(signal.SIGCONT)
            host.daemon.close()


def check_cluster(host: Host, etcd_prefix: str = "/ipamd") -> subprocess.CompletedProcess[str]:
    """`ipamd check --cluster` on a stopped host's state dir."""
    import sys

    config = host.daemon.config
    assert config is not None
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ipamd.storage.check",
            "--cluster",
            "--config",
            str(config),
            "--state-dir",
            str(host.daemon.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def client_check(host: Host) -> subprocess.CompletedProcess[str]:
    """`ipamd-client cluster check` on a running host (the daemon checks itself)."""
    import sys

    client = Path(sys.executable).parent / "ipamd-client"  # as installed: what users run
    return subprocess.run(
        [str(client), "--socket", str(host.daemon.socket), "cluster", "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
