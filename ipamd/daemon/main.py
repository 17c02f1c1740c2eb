"""`ipamd`: the daemon's entry point (and `ipamd check`).

One nursery tree (daemon(7) style: foreground, stderr, sd_notify):

    run_daemon
      +- writer.run          the only writer; cancelled last but one
      +- server.serve        the listener and every connection, in one epoll set
      +- metrics endpoint    HTTP GET /metrics, when a metrics socket is given
      +- watchdog            WATCHDOG=1 at half WATCHDOG_USEC
      +- (waits for SIGTERM/SIGINT)

Shutdown: stop accepting, let the writer finish the batch in flight (queued
mutations get `unavailable`), let connections send those answers, close the
database, exit 0. Exit statuses are documented in the README and in
systemd/ipamd.service.
"""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import trio

from ipamd import __version__, exits, paths
from ipamd.config import Config, ConfigError, load_config
from ipamd.core.requests import CreateNetworkRequest
from ipamd.core.snapshot import snapshot
from ipamd.daemon import sdnotify
from ipamd.daemon.boot import BootIdError, read_boot_id
from ipamd.daemon.committed_state import CommittedState
from ipamd.daemon.environment import EnvironmentRefused, read_environment
from ipamd.daemon.log_format import LineFormat
from ipamd.daemon.recovery import WriterFailed
from ipamd.daemon.server import Server
from ipamd.daemon.service import Service
from ipamd.daemon.status_line import StatusReporter
from ipamd.daemon.suspects import reclaim_after_reboot, suspect_total
from ipamd.daemon.writer import Writer
from ipamd.errors import IpamError, NetworkExists
from ipamd.metrics.instruments import ConnectionCounters
from ipamd.storage.store import CorruptDatabase, StateDirLocked, Store, StoreUnavailable

log = logging.getLogger("ipamd")

# Bound on how long shutdown waits for connections to send their last answers.
SHUTDOWN_GRACE_S = 5.0
LISTEN_BACKLOG = 1024
# FileDescriptorName= of systemd/ipamd-metrics.socket: that fd serves HTTP metrics.
METRICS_FD_NAME = "metrics"


class BindError(Exception):
    """The socket cannot be bound (exit status 73)."""


def bind_socket(config: Config) -> tuple[socket.socket, paths.SocketIdentity]:
    """Bind `config.socket`, replacing only a stale socket (paths.py); the socket and
    the identity of its file, so that shutdown removes that file and nothing else."""
    path = config.socket
    try:
        paths.ensure_directory(path.parent, paths.SOCKET_DIR_MODE, "socket directory")
        paths.clear_stale_socket(path)
    except paths.PathRefused as e:
        raise BindError(str(e)) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    identity: paths.SocketIdentity | None = None
    try:
        sock.bind(str(path))
        identity = paths.socket_identity(path)
        os.chmod(path, config.socket_mode)
        if config.socket_gid is not None:
            os.chown(path, -1, config.socket_gid)
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        if identity is not None:  # ours: bound a moment ago
            paths.remove_socket(path, identity)
        # "AF_UNIX path too long" comes with no strerror.
        raise BindError(f"cannot bind {path}: {e.strerror or e}") from e
    return sock, identity


async def ensure_networks(writer: Writer, config: Config) -> None:
    for network in config.networks:
        try:
            await writer.submit(CreateNetworkRequest(network))
        except NetworkExists as e:
            raise ConfigError(
                f"network {network.name} in the config differs from the stored one: {e}"
            ) from e
        except IpamError as e:
            raise ConfigError(f"cannot create network {network.name} from the config: {e}") from e


async def watchdog(interval: float) -> None:
    while True:
        sdnotify.notify("WATCHDOG=1")
        await trio.sleep(interval)


# Every request allocates a few dozen container objects and frees them within
# its batch: with the default (700) the cyclic collector ran every few requests;
# at 20,000 bench_daemon.py measured about 10% more allocations per second.
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """After the rebuild: its objects (the free-range index, a million runs at
    most) live as long as the daemon, so the collector need never walk them
    again; and young collections run less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def run_daemon(
    config: Config,
    listening: socket.socket,
    metrics_listening: socket.socket | None = None,
    watchdog_interval: float | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT. `watchdog_interval` is environment.py's verdict
    on WATCHDOG_USEC/WATCHDOG_PID, judged before READY (None: no pings)."""
    boot = read_boot_id(config.leases.boot_id_path)  # once: the boot cannot change under us
    store = Store(config.state_dir, boot)
    try:
        await trio.to_thread.run_sync(store.open)
    except StateDirLocked as e:
        raise StoreUnavailable(
            f"{e}: stop that one first, or give this one another --state-dir"
        ) from None
    try:
        allocator = await trio.to_thread.run_sync(store.load)
        blocks = None
        if config.cluster is not None:
            from ipamd.cluster.local import LocalBlocks

            blocks = LocalBlocks()  # cluster subnets hand out only the blocks owned here
            blocks.rebuilt(allocator, store)
        tune_gc()
        committed = CommittedState(store, snapshot(allocator))
        writer = Writer(
            store,
            allocator,
            max_batch=config.limits.max_batch,
            extension=blocks,
            published=committed,
        )
        connections = ConnectionCounters()  # the server counts, the service reads
        service = Service(committed, writer, config, connections)
        server = Server(service, config.limits, connections)
        metrics = service.exposition
        async with trio.open_nursery() as nursery:
            writer_scope = trio.CancelScope()
            writer_done = trio.Event()

            async def run_writer(task_status: trio.TaskStatus[None]) -> None:
                try:
                    with writer_scope:
                        await writer.run(task_status=task_status)
                finally:
                    writer_done.set()

            await nursery.start(run_writer)
            nursery.start_soon(service.mutation_log.run)
            if config.cluster is not None and blocks is not None:
                from ipamd.cluster.frontend import ClusterFrontend
                from ipamd.cluster.node import ClusterNode

                # Started at once: READY comes from the local state; the
                # catch-up with etcd goes on in the background (STATUS= says so).
                node = ClusterNode(config.cluster, writer, blocks)
                await nursery.start(node.run)
                service.cluster = ClusterFrontend(node)
            await ensure_networks(writer, config)
            suspect = suspect_total(committed.networks)
            grace = config.leases.reclaim_after_reboot_s
            grace_text = config.leases.reclaim_after_reboot_text or f"{grace}s"
            if suspect:
                log.info(
                    "%d lease(s) from an earlier boot are suspect (current boot %s); %s",
                    suspect,
                    boot,
                    "a gc that does not list them releases them"
                    if grace is None
                    else f"released unless confirmed within {grace_text} of start",
                )
            if grace is not None:
                # Counted from now, after the rebuild: later than `uptime_s` counts from.
                deadline = trio.current_time() + grace
                await nursery.start(reclaim_after_reboot, service, deadline, grace_text)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await nursery.start(server.serve, trio.socket.from_stdlib_socket(listening))
                if metrics_listening is not None:
                    from ipamd.metrics.http import MetricsEndpoint

                    metrics.prepare()  # the import, before READY rather than in a scrape
                    endpoint = MetricsEndpoint(metrics.render)
                    await nursery.start(endpoint.serve, metrics_listening)
                    log.info("metrics on http://%s/metrics", _address_text(metrics_listening))
                leases = sum(snap.leases for snap in committed.networks.values())
                log.info(
                    "ready: %d network(s), %d lease(s), socket %s, state %s",
                    len(committed.networks),
                    leases,
                    config.socket,
                    config.state_dir,
                )
                status = StatusReporter(service)
                status.mark_sent(status.text())
                sdnotify.notify(f"READY=1\nSTATUS={status.sent}")
                nursery.start_soon(status.run)
                if watchdog_interval is not None:
                    nursery.start_soon(watchdog, watchdog_interval)
                async for signum in signals:
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    break
            status.stop()
            sdnotify.notify("STOPPING=1\nSTATUS=shutting down")
            server.stop_accepting()
            writer_scope.cancel()
            await writer_done.wait()
            with trio.move_on_after(SHUTDOWN_GRACE_S):
                await server.wait_quiet()
                await trio.sleep(0.05)  # let senders flush the last answers
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    log.info("stopped")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ipamd",
        description="IP address manager daemon for container hosts (runs in the foreground).",
        epilog="`ipamd check [--state-dir DIR]` verifies a database offline; `ipamd import"
        " host-local DIR --network NAME` imports CNI host-local's state (daemon stopped).",
    )
    parser.add_argument("--config", type=Path, help="TOML config file (optional)")
    parser.add_argument("--socket", type=Path, help="Unix socket path to bind")
    parser.add_argument("--state-dir", type=Path, help="directory of the LevelDB database")
    parser.add_argument("--version", action="version", version=f"ipamd {__version__}")
    return parser.parse_args(argv)


def setup_logging(level: str) -> None:
    """One line per record on stderr, in the format of ipamd/daemon/log_format.py.

    When stderr is the journal, every line starts with its priority (`<3>` for
    errors), which journald keeps for `journalctl -p err`; anywhere else a line
    starts with its ISO time.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormat.for_stderr().formatter())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from ipamd.storage.check import main as check_main

        return check_main(argv[1:])
    if argv[:1] == ["import"]:
        from ipamd.storage.importer import main as import_main

        return import_main(argv[1:])
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return exits.OK if e.code == 0 else exits.USAGE
    try:
        config = load_config(args.config, socket=args.socket, state_dir=args.state_dir)
    except ConfigError as e:
        setup_logging("info")
        log.error("%s", e)
        return exits.CONFIG
    setup_logging(config.log_level)
    try:
        started = read_environment()
    except EnvironmentRefused as e:
        log.error("%s", e)
        return exits.CONFIG
    for warning in started.warnings:
        log.warning("%s", warning)
    passed: list[socket.socket] = []
    metrics_listening: socket.socket | None = None
    bound: paths.SocketIdentity | None = None
    try:
        named = started.passed_sockets
        passed = [sock for name, sock in named if name != METRICS_FD_NAME]
        metrics_listening = next((s for n, s in named if n == METRICS_FD_NAME), None)
        if metrics_listening is None and config.metrics_listen is not None:
            metrics_listening = bind_metrics_listen(config.metrics_listen)
        if passed:
            listening = passed[0]
        else:
            listening, bound = bind_socket(config)
    except BindError as e:
        log.error("%s", e)
        return exits.CANTCREAT
    try:
        trio.run(run_daemon, config, listening, metrics_listening, started.watchdog_interval)
    except KeyboardInterrupt:
        return exits.OK
    except Exception as e:
        return _exit_status_of(e)
    finally:
        listening.close()
        if metrics_listening is not None:
            metrics_listening.close()
        if bound is not None:
            _remove_socket(config.socket, bound)
    return exits.OK


def bind_metrics_listen(address: tuple[str, int]) -> socket.socket:
    """`[metrics] listen`, bound (BindError, exit status 73, when it cannot be)."""
    from ipamd.metrics.http import bind_metrics

    host, port = address
    try:
        return bind_metrics(host, port)
    except OSError as e:
        hint = ""
        if e.errno in (errno.EAFNOSUPPORT, errno.EPERM, errno.EACCES):
            # ipamd.service allows only AF_UNIX sockets, in a private network namespace.
            hint = " (under systemd, enable ipamd-metrics.socket instead of [metrics] listen)"
        raise BindError(
            f"cannot bind the metrics endpoint {host}:{port}: {e.strerror}{hint}"
        ) from e


def _address_text(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


FATAL_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (ConfigError, exits.CONFIG),
    (BootIdError, exits.CONFIG),
    (CorruptDatabase, exits.DATAERR),
    (WriterFailed, exits.TEMPFAIL),
    (StoreUnavailable, exits.CANTCREAT),
)


def _exit_status_of(error: Exception) -> int:
    """Log why the daemon stops and map it to its documented exit status.

    Failures inside the nursery tree arrive wrapped in exception groups; the
    first known leaf decides.
    """
    for leaf in _leaves(error):
        for kind, status in FATAL_ERRORS:
            if isinstance(leaf, kind):
                log.error("%s", leaf)
                return status
    log.error("internal error", exc_info=error)
    return exits.FAILURE


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _remove_socket(path: Path, identity: paths.SocketIdentity) -> None:
    try:
        if not paths.remove_socket(path, identity):
            log.warning("%s is no longer the socket this ipamd bound; left alone", path)
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e.strerror)


if __name__ == "__main__":
    sys.exit(main())
