"""Cluster mode: many hosts share one address space through etcd.

etcd decides only which host owns which block of addresses; each host
allocates inside its own blocks through the same writer and group commit as
for local networks, so the common path never leaves the host.

    blocks.py   pure: how a subnet is cut into blocks, which to claim next
    keys.py     pure: the etcd key layout and the values stored there
    etcd.py     the seam: etcd3gw (blocking) in one worker thread
    local.py    the writer's extension: the blocks this host owns, in LevelDB
    node.py     the tasks: claims, catch-up, liveness, empty-block return
"""
