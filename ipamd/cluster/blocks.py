"""How a cluster subnet is cut into blocks, and which block to claim next. Pure.

A block is an aligned CIDR of `block_prefix` inside the subnet; block `i`
covers offsets `[i * size, (i + 1) * size - 1]` from the subnet's network
address. Rules it keeps:
- Counting is arithmetic on ranges, never a walk over addresses: an IPv6 /64
  cut into /122 blocks has 2**58 of them.
- Only blocks that hold an address dynamic allocation may hand out are
  candidates for a dynamic claim; any block may be claimed for a static one.
- Each host starts its search at a place given by a hash of its name (as
  Calico does), so hosts starting together rarely race for the same block.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator, Set
from dataclasses import dataclass

from ipamd.core.network import IPAddress, IPNetwork, Subnet


@dataclass(frozen=True, slots=True)
class BlockSpace:
    subnet: Subnet

    @property
    def prefix(self) -> int:
        assert self.subnet.block_prefix is not None  # cluster subnets always have one
        return self.subnet.block_prefix

    @property
    def block_size(self) -> int:
        return 1 << (self.subnet.cidr.max_prefixlen - self.prefix)

    @property
    def count(self) -> int:
        return 1 << (self.prefix - self.subnet.cidr.prefixlen)

    def offsets(self, index: int) -> tuple[int, int]:
        first = index * self.block_size
        return first, first + self.block_size - 1

    def cidr(self, index: int) -> IPNetwork:
        address = self.subnet.address_at(index * self.block_size)
        return ipaddress.ip_network(f"{address}/{self.prefix}")

    def index_of(self, address: IPAddress) -> int:
        """REQUIRES: subnet.contains(address)."""
        return self.subnet.offset(address) // self.block_size

    def index_of_cidr(self, block: IPNetwork) -> int | None:
        """The index of `block`, or None when it is not one of this space's blocks."""
        if block.prefixlen != self.prefix or not self.subnet.contains(block.network_address):
            return None
        return self.index_of(block.network_address)

    def usable(self, index: int) -> int:
        """Addresses of the block that may ever be handed out (statics included)."""
        return self._count(index, self.subnet.host_bounds)

    def dynamic(self, index: int) -> int:
        """Addresses of the block dynamic allocation may hand out."""
        return self._count(index, self.subnet.lease_range)

    def _count(self, index: int, bounds: tuple[int, int]) -> int:
        first, last = self.offsets(index)
        low, high = max(first, bounds[0]), min(last, bounds[1])
        if low > high:
            return 0
        covered = 0
        reach = low - 1  # the reserved ranges may overlap: count each address once
        for a, b in sorted(self.subnet.reserved_ranges()):
            a, b = max(a, low, reach + 1), min(b, high)
            if a <= b:
                covered += b - a + 1
                reach = b
        return high - low + 1 - covered

    def dynamic_indexes(self) -> tuple[int, int]:
        """The first and last index of the blocks overlapping the lease range."""
        first, last = self.subnet.lease_range
        return first // self.block_size, last // self.block_size

    def candidates(self, host: str, network: str, taken: Set[int]) -> Iterator[int]:
        """Blocks a dynamic claim may try, in this host's order: each block of
        the lease range once, from a hashed start, skipping `taken` and the
        blocks with nothing to hand out."""
        low, high = self.dynamic_indexes()
        span = high - low + 1
        digest = hashlib.sha256(f"{host}\0{network}\0{self.subnet.cidr}".encode()).digest()
        start = int.from_bytes(digest[:8], "big") % span
        for step in range(span):
            index = low + (start + step) % span
            if index not in taken and self.dynamic(index) > 0:
                yield index
