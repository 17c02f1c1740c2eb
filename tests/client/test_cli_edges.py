"""`ipamd-client` at the edges a new user hits first (issue 14, should-fix), as a subprocess.

Against the real daemon: `--json` after the command, a daemon error as JSON,
the cannot-connect hint, `network rm` naming --force, `network list`; and every
`ipamd-client` command the README and systemd/ipamd.conf tell people to run
exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipamd.daemon.service import MUTATIONS
from ipamd.errors import ERRORS_BY_CODE
from tests.daemon.edges import ipamd_client
from tests.support import Daemon, RawClient, RpcError

REPO = Path(__file__).resolve().parents[2]
NETWORK_NOT_FOUND_STATUS = 13
NETWORK_IN_USE_STATUS = 19
EX_UNAVAILABLE = 69


@pytest.fixture(scope="module")
def sock(shared_daemon: Daemon) -> Iterator[Path]:
    created = ipamd_client(
        shared_daemon.socket, "network", "create", "edges", "--subnet", "10.71.0.0/24"
    )
    assert created.returncode == 0, created.stderr
    yield shared_daemon.socket


@pytest.mark.parametrize(
    "command",
    [["stats"], ["network", "ls"], ["network", "inspect", "edges"], ["status"], ["ping"]],
)
def test_json_after_the_command_is_the_same_as_before_it(sock: Path, command: list[str]) -> None:
    before = ipamd_client(sock, "--json", *command)
    after = ipamd_client(sock, *command, "--json")
    assert (before.returncode, after.returncode) == (0, 0), after.stderr
    first, second = json.loads(before.stdout), json.loads(after.stdout)
    for volatile in ("uptime_s", "connections", "batches", "mutations", "mean_batch_size"):
        if isinstance(first, dict):
            first.pop(volatile, None)
            second.pop(volatile, None)
    assert first == second


def test_with_json_a_daemon_error_is_json_on_stdout_with_the_same_status(sock: Path) -> None:
    for args in (
        ["--json", "network", "inspect", "nope"],
        ["network", "inspect", "nope", "--json"],
    ):
        done = ipamd_client(sock, *args)
        assert done.returncode == NETWORK_NOT_FOUND_STATUS, done.stderr
        assert json.loads(done.stdout) == {
            "error": {
                "code": 3,
                "name": "network_not_found",
                "message": "could not find network 'nope'",
            }
        }
    plain = ipamd_client(sock, "network", "inspect", "nope")
    assert plain.returncode == NETWORK_NOT_FOUND_STATUS and plain.stdout == ""


def test_cannot_connect_says_how_to_point_the_client_at_a_socket(tmp_path: Path) -> None:
    done = ipamd_client(tmp_path / "absent.sock", "ping")
    assert done.returncode == EX_UNAVAILABLE
    assert f"cannot connect to ipamd at {tmp_path / 'absent.sock'}" in done.stderr
    assert "--socket PATH" in done.stderr and "IPAMD_SOCKET" in done.stderr


def test_network_rm_with_leases_names_the_force_flag(sock: Path) -> None:
    assert (
        ipamd_client(sock, "network", "create", "busy", "--subnet", "10.72.0.0/24").returncode == 0
    )
    assert ipamd_client(sock, "alloc", "c1", "--network", "busy").returncode == 0
    done = ipamd_client(sock, "network", "rm", "busy")
    assert done.returncode == NETWORK_IN_USE_STATUS
    assert "network busy has 1 lease(s)" in done.stderr
    assert "`ipamd-client network rm busy --force` releases them" in done.stderr
    assert ipamd_client(sock, "network", "rm", "busy", "--force").returncode == 0


def test_network_list_is_network_ls(sock: Path) -> None:
    listed, ls = ipamd_client(sock, "network", "list"), ipamd_client(sock, "network", "ls")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == ls.stdout and "edges" in listed.stdout
    assert "list" in ipamd_client(sock, "network", "--help").stdout


VALUE_OPTIONS = {"--socket", "--timeout"}  # top-level options that take a value


def documented_commands() -> list[tuple[str, list[str]]]:
    """The command words of every `ipamd-client ...` the README and systemd/ipamd.conf
    tell people to run: in fenced code blocks and in `inline code`."""
    found = []
    for path in (REPO / "README.md", REPO / "systemd" / "ipamd.conf"):
        text = path.read_text()
        snippets = re.findall(r"`(ipamd-client[^`]*)`", text)
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            snippets += [
                line[line.index("ipamd-client") :]
                for line in block.splitlines()
                if "ipamd-client" in line
            ]
        for snippet in snippets:
            tokens = re.split(r"[#|>;]", snippet)[0].split()[1:]
            words: list[str] = []
            skip = False
            for token in tokens:
                if skip:
                    skip = False
                elif token in VALUE_OPTIONS:
                    skip = True
                elif re.fullmatch(r"[a-z][\w.-]*", token):
                    words.append(token)
                elif not token.startswith("-"):
                    break  # a placeholder ("...") or a value: the command words are done
            if words:
                found.append((path.name, words))
    return found


def test_every_documented_command_exists(tmp_path: Path) -> None:
    commands = documented_commands()
    assert len(commands) >= 5, commands
    for source, words in commands:
        # The command words, then --help (a NAME or CONTAINER after them is fine).
        done = ipamd_client(tmp_path / "unused.sock", *words[:2], "--help")
        assert done.returncode == 0, f"{source}: ipamd-client {' '.join(words)}: {done.stderr}"


def test_the_readme_links_nothing_outside_the_repository() -> None:
    text = (REPO / "README.md").read_text()
    assert "../" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target


READ_METHODS = {"ping", "status", "stats", "metrics", "network.get", "network.list", "get"}
READ_METHODS |= {"lease.list", "lease.owner"}


def protocol_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Protocol\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_protocol_section_is_the_whole_contract(shared_daemon: Daemon) -> None:
    section = protocol_section()
    for method in sorted(set(MUTATIONS) | READ_METHODS):
        assert f"| `{method}` |" in section, method
    for code, cls in ERRORS_BY_CODE.items():
        assert f"| {code} | `{cls.name}` |" in section, cls.name
    assert "Limits" in section and "max_frame_bytes" in section
    # Every method it documents is one the daemon answers (not unknown_method).
    documented = re.findall(r"^\| `([a-z.]+)` \|", section, flags=re.M)
    with RawClient(shared_daemon.socket) as client:
        for method in documented:
            try:
                client.call(method, {})
            except RpcError as e:
                assert e.name != "unknown_method", method
