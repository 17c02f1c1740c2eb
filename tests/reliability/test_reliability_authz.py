"""Authorisation: unprivileged uids can read and cannot mutate; the socket is as configured.

Each unprivileged client is a child process that starts as root (so that it
can load the interpreter and msgpack from wherever the venv lives), then drops
to the given uid, gid and supplementary groups with setgroups/setgid/setuid
before it connects. The daemon judges it by SO_PEERCRED (DESIGN.md section 6):
mutations need uid 0, the daemon's own uid, or an allowed uid or gid; reads
need only access to the socket, whose mode and group come from the config.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import PYTHON, TestDaemon, write_config

NETWORK = {"name": "authz", "subnets": [{"subnet": "10.63.0.0/24", "gateway": "10.63.0.1"}]}
# Ids no account on a test machine is likely to have.
NOBODY = 65534
STRANGER = 65531
ALLOWED_UID = 65533
ALLOWED_GID = 65532
SOCKET_GID = 65530

CHILD = r"""
import json, os, socket, sys
import msgpack

uid, gid = int(sys.argv[1]), int(sys.argv[2])
groups = json.loads(sys.argv[3])
path, calls = sys.argv[4], json.loads(sys.argv[5])
os.setgroups(groups)
os.setgid(gid)
os.setuid(uid)
out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(path)
except OSError as e:
    out["connect_errno"] = e.errno
    print(json.dumps(out))
    sys.exit(0)
unpacker = msgpack.Unpacker(raw=False)
answers = []
for msgid, (method, params) in enumerate(calls, 1):
    sock.sendall(msgpack.packb([0, msgid, method, [params] if params else []]))
    frame = None
    while frame is None:
        for frame in unpacker:
            break
        else:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("the daemon closed the connection")
            unpacker.feed(data)
    answers.append({"method": method, "error": frame[2], "result": frame[3]})
out["answers"] = answers
print(json.dumps(out))
"""


def as_user(
    socket_path: Path,
    uid: int,
    gid: int,
    calls: list[tuple[str, dict[str, Any]]],
    groups: tuple[int, ...] = (),
) -> dict[str, Any]:
    proc = subprocess.run(
        [
            PYTHON,
            "-c",
            CHILD,
            str(uid),
            str(gid),
            json.dumps(list(groups)),
            str(socket_path),
            json.dumps(calls),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    assert (out["uid"], out["euid"], out["gid"]) == (uid, uid, gid), out
    return out


def reads(cid: str, ip: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("ping", {}),
        ("status", {}),
        ("stats", {}),
        ("network.list", {}),
        ("network.get", {"name": "authz"}),
        ("get", {"container_id": cid}),
        ("lease.list", {"network": "authz"}),
        ("lease.owner", {"ip": ip}),
    ]


def mutations(cid: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("alloc", {"container_id": "intruder", "networks": {"authz": {}}}),
        ("alloc", {"container_id": cid, "networks": {"authz": {}}}),
        ("release", {"container_id": cid}),
        ("gc", {"network": "authz", "valid": []}),
        ("network.create", {"name": "intruder-net", "subnets": [{"subnet": "10.99.0.0/24"}]}),
        ("network.delete", {"name": "authz", "force": True}),
    ]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory every uid may traverse (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="ipamd-authz-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def held_state(daemon: TestDaemon) -> tuple[Any, ...]:
    with daemon.client() as client:
        status = client.call("status")
        return (
            client.call("network.list"),
            client.call("lease.list", {"network": "authz"}),
            status["mutations"],
        )


@pytest.mark.slow
@pytest.mark.root
def test_unprivileged_uid_reads_but_cannot_mutate(tmp_path: Path, socket_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run clients as other uids")
    config = write_config(tmp_path / "ipamd.toml", networks=[NETWORK], socket_mode="0666")
    daemon = TestDaemon(
        state_dir=tmp_path / "state", socket=socket_dir / "authz.sock", config=config
    )
    try:
        daemon.start()
        with daemon.client() as client:
            lease = client.call("alloc", {"container_id": "owned", "networks": {"authz": {}}})
        ip = lease["networks"]["authz"]["ips"][0]["address"].split("/")[0]
        before = held_state(daemon)
        out = as_user(daemon.socket, NOBODY, NOBODY, reads("owned", ip) + mutations("owned"))
        after = held_state(daemon)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.ensure_dead()
    answers = out["answers"]
    read_answers, mutation_answers = (
        answers[: len(reads("owned", ip))],
        answers[len(reads("owned", ip)) :],
    )
    for answer in read_answers:
        assert answer["error"] is None, answer
    for answer in mutation_answers:
        assert answer["error"] is not None, f"uid {NOBODY} could {answer['method']}: {answer}"
        assert (answer["error"]["code"], answer["error"]["name"]) == (10, "permission_denied"), (
            answer
        )
    assert after == before, "a refused mutation changed something"
    print(
        f"\nuid {NOBODY}: {len(read_answers)} reads answered"
        f" ({', '.join(a['method'] for a in read_answers)}); {len(mutation_answers)} mutations"
        f" refused with permission_denied ({', '.join(a['method'] for a in mutation_answers)});"
        f" networks, leases and the writer's mutation count unchanged"
    )


@pytest.mark.slow
@pytest.mark.root
def test_socket_mode_group_and_allow_lists(tmp_path: Path, socket_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run clients as other uids")
    config = write_config(
        tmp_path / "ipamd.toml",
        networks=[NETWORK],
        socket_mode="0660",
        socket_group=SOCKET_GID,
        allow_uids=[ALLOWED_UID],
        allow_gids=[ALLOWED_GID],
    )
    daemon = TestDaemon(
        state_dir=tmp_path / "state", socket=socket_dir / "authz.sock", config=config
    )
    alloc = [
        ("alloc", {"container_id": "c", "networks": {"authz": {}}}),
        ("release", {"container_id": "c"}),
    ]
    try:
        daemon.start()
        st = os.stat(daemon.socket)
        outsider = as_user(daemon.socket, STRANGER, STRANGER, [("ping", {})])
        member = as_user(daemon.socket, STRANGER, SOCKET_GID, [("ping", {}), *alloc])
        allowed_uid = as_user(daemon.socket, ALLOWED_UID, SOCKET_GID, alloc)
        allowed_gid = as_user(daemon.socket, STRANGER, ALLOWED_GID, alloc, groups=(SOCKET_GID,))
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.ensure_dead()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
    assert st.st_gid == SOCKET_GID, st.st_gid
    assert outsider.get("connect_errno") == errno.EACCES, outsider
    assert member["answers"][0]["error"] is None, member
    assert [a["error"]["name"] if a["error"] else None for a in member["answers"][1:]] == [
        "permission_denied",
        "permission_denied",
    ], member
    for who, out in (("allowed uid", allowed_uid), ("allowed gid", allowed_gid)):
        assert [a["error"] for a in out["answers"]] == [None, None], (who, out)
    print(
        f"\nsocket mode {oct(stat.S_IMODE(st.st_mode))} group {st.st_gid}, as configured;"
        f" uid {STRANGER} outside the group: connect refused (EACCES); in the group (gid"
        f" {SOCKET_GID}): reads answered, alloc and release refused; uid {ALLOWED_UID} (allow_uids)"
        f" and gid {ALLOWED_GID} (allow_gids, reaching the socket through a supplementary group):"
        " alloc and release done"
    )
