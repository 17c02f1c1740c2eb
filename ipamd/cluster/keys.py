"""The etcd key layout of cluster mode, and the values stored there. Pure.

Under the configured prefix P (default "/ipamd"):

    P/networks/<network>              -> the network's wire form (JSON)
    P/blocks/<network>/<block cidr>   -> {"host", "subnet"} (JSON): who owns it;
                                         its create revision is the fencing token
    P/hosts/<host>                    -> {"host", "pid", "since"} under the host's
                                         liveness lease: present while it is alive
    P/summaries/<host>                -> {network: {block: [used, free]}} as last
                                         published by the host (no lease: it
                                         outlives the host, for reclaim decisions)

Values are JSON so that `etcdctl get --prefix /ipamd` is readable by an
operator. Nothing per lease is ever written: a block holds a few dozen leases.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from ipamd.core.network import IPNetwork


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str

    def network(self, name: str) -> str:
        return f"{self.prefix}/networks/{name}"

    @property
    def networks(self) -> str:
        return f"{self.prefix}/networks/"

    def block(self, network: str, block: IPNetwork) -> str:
        return f"{self.prefix}/blocks/{network}/{block}"

    def blocks_of(self, network: str) -> str:
        return f"{self.prefix}/blocks/{network}/"

    @property
    def blocks(self) -> str:
        return f"{self.prefix}/blocks/"

    def host(self, name: str) -> str:
        return f"{self.prefix}/hosts/{name}"

    @property
    def hosts(self) -> str:
        return f"{self.prefix}/hosts/"

    def summary(self, host: str) -> str:
        return f"{self.prefix}/summaries/{host}"

    @property
    def summaries(self) -> str:
        return f"{self.prefix}/summaries/"

    def parse_block(self, key: str) -> tuple[str, IPNetwork] | None:
        """(network, block) of a block key, or None for a key that is not one."""
        rest = key.removeprefix(self.blocks)
        if rest == key:
            return None
        network, _, cidr = rest.partition("/")
        try:
            return network, ipaddress.ip_network(cidr)
        except ValueError:
            return None

    def name_after(self, key: str, prefix: str) -> str:
        return key.removeprefix(prefix)


def encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def block_value(host: str, subnet: IPNetwork) -> bytes:
    return encode({"host": host, "subnet": str(subnet)})


def owner_of(raw: bytes) -> str:
    value = decode(raw)
    if isinstance(value, dict):
        host = value.get("host")
        if isinstance(host, str):
            return host
    return "(unreadable owner)"
