"""What the service asks of cluster mode: which requests it takes, and the
`cluster.*` methods. The one seam between the service and ipamd/cluster/.

It takes: network.create of a cluster network (defined in etcd first), an
alloc naming a cluster network or one not known here (it may be defined in
etcd), and network.delete of a cluster network (refused, naming the hosts
that hold blocks of it; see the README). Everything else goes straight to the writer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ipamd.cluster.node import ClusterNode
from ipamd.core.network import validate_name
from ipamd.core.requests import (
    AllocRequest,
    CreateNetworkRequest,
    DeleteNetworkRequest,
    Mutation,
    check_keys,
)
from ipamd.daemon.writer import OnDone
from ipamd.errors import InvalidRequest, IpamError, Unavailable

log = logging.getLogger("ipamd.cluster")


class ClusterFrontend:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def takes(self, mutation: Mutation) -> bool:
        committed = self.node.writer.committed
        if isinstance(mutation, AllocRequest):
            for name in mutation.networks:
                snap = committed.get(name)
                if snap is None or snap.network.is_cluster:
                    return True
            return False
        if isinstance(mutation, CreateNetworkRequest):
            return mutation.network.is_cluster
        if isinstance(mutation, DeleteNetworkRequest):
            snap = committed.get(mutation.name)
            return snap is not None and snap.network.is_cluster
        return False

    def start(self, mutation: Mutation, done: OnDone) -> None:
        """REQUIRES: takes(mutation)."""
        if isinstance(mutation, AllocRequest):
            self.node.start_alloc(mutation, done)
        elif isinstance(mutation, CreateNetworkRequest):
            network = mutation.network
            self._run(lambda: self.node.create_network(network), done)
        else:
            name = getattr(mutation, "name", "?")
            self._run(lambda: self.node.refuse_delete(name), done)

    def call(self, method: str, params: dict[str, Any], done: OnDone) -> None:
        """A `cluster.*` method: answered once etcd has been asked."""
        if method == "cluster.status":
            check_keys(params, set(), method)
            self._run(self.node.status, done)
        elif method == "cluster.blocks":
            check_keys(params, {"network"}, method)
            name = validate_name(params.get("network"))
            self._run(lambda: self.node.blocks(name), done)
        elif method == "cluster.check":
            check_keys(params, set(), method)
            self._run(self.node.check, done)
        elif method == "cluster.release_host":
            check_keys(params, {"host"}, method)
            host = validate_name(params.get("host"), "host name")
            self._run(lambda: self.node.release_host(host), done)
        else:
            raise InvalidRequest(f"no such cluster method {method!r}")

    def network_stats(self, name: str) -> dict[str, Any]:
        """`stats`'s "cluster" entry of a cluster network (no etcd call)."""
        return self.node.network_stats(name)

    def status(self) -> dict[str, Any]:
        """What `status` and the STATUS= line show of cluster mode."""
        etcd = self.node.etcd
        out: dict[str, Any] = {
            "host": self.node.host,
            "caught_up": self.node.caught_up,
            "etcd_reachable": bool(etcd.reachable),
            "claims": self.node.claims,
        }
        if etcd.reachable is False:
            out["etcd_error"] = etcd.unreachable_text()
        return out

    def _run(self, work: Callable[[], Awaitable[Any]], done: OnDone) -> None:
        async def task() -> None:
            try:
                result = await work()
            except IpamError as e:
                done(None, e)
            except Exception:
                log.exception("cluster request failed")
                done(None, Unavailable("internal error in cluster mode; see the daemon's log"))
            else:
                done(result, None)

        self.node.spawn(task)
