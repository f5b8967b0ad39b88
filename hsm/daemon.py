"""hsmd: serve the storage API over XML-RPC until SIGTERM."""

from __future__ import annotations

import argparse
import grp
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time

import hsm
from hsm import config as hsmconfig
from hsm import hooks, logsetup, sdnotify
from hsm.api.app import Application
from hsm.errors import ConfigError, HookError, HsmError
from hsm.rpc.metrics import Metrics
from hsm.rpc.server import RpcServer, ServerSettings

log = logging.getLogger("hsm.daemon")

EXIT_CONFIG = 2
EXIT_START = 1
EXPIRY_INTERVAL = 1.0  # seconds between sweeps of ended tasks and requestId answers past their age or count


def parse_address(text: str) -> tuple[str, str]:
    """HOST:PORT or [IPV6]:PORT as (host, port) texts."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), port


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def load_config(args: argparse.Namespace) -> hsmconfig.Config:
    overrides: dict[tuple[str, str], str] = {}
    if args.listen:
        host, port = parse_address(args.listen)
        overrides[("rpc", "host")] = host
        overrides[("rpc", "port")] = port
    if args.state_dir:
        overrides[("irs", "state_dir")] = os.path.abspath(args.state_dir)
    config = hsmconfig.load(hsmconfig.default_path(args.config), overrides)
    if not config.rpc.ssl and not is_loopback(config.rpc.host):
        raise ConfigError(f"refusing to listen on {config.rpc.host} without TLS: "
                          "set [rpc] ssl = true with key_file, cert_file and ca_file")
    allowed_uids(config)
    if config.rpc.unix_socket_group:
        try:
            grp.getgrnam(config.rpc.unix_socket_group)
        except KeyError:
            raise ConfigError(f"[rpc] unix_socket_group = {config.rpc.unix_socket_group}: no such group") from None
    if config.rpc.ssl:
        for name in ("key_file", "cert_file", "ca_file"):
            if not os.path.isfile(config.get("rpc", name)):
                raise ConfigError(f"[rpc] {name} = {config.get('rpc', name)}: no such file")
    return config


def allowed_uids(config: hsmconfig.Config) -> tuple[int, ...]:
    try:
        return tuple(int(uid) for uid in config.rpc.allowed_uids)
    except ValueError:
        raise ConfigError(f"[rpc] allowed_uids = {', '.join(config.rpc.allowed_uids)}: expected user ids") from None


class Service:
    """hsmd: the Application behind its XML-RPC server."""

    def __init__(self, config: hsmconfig.Config) -> None:
        self.config = config
        self.app = Application(config)
        rpc = config.rpc
        settings = ServerSettings(
            host=rpc.host, port=rpc.port, threads=rpc.threads, listen_backlog=rpc.listen_backlog,
            max_connections=rpc.max_connections, max_connections_per_peer=rpc.max_connections_per_peer,
            max_request_bytes=rpc.max_request_bytes, header_timeout=rpc.header_timeout,
            body_timeout=rpc.body_timeout, idle_timeout=rpc.idle_timeout, shutdown_timeout=rpc.shutdown_timeout,
            tls=(rpc.key_file, rpc.cert_file, rpc.ca_file) if rpc.ssl else None,
            unix_socket=rpc.unix_socket, unix_socket_group=rpc.unix_socket_group,
            unix_socket_mode=rpc.unix_socket_mode, allowed_uids=allowed_uids(config))
        self.server = RpcServer(settings, self.app.dispatcher, Metrics(
            self.app.stats, task_counts=self.app.tasks.counts, repositories=self.app.engine.health))

    def expire(self) -> None:
        self.app.expire()

    def stop(self) -> None:
        self.server.stop()
        self.app.stop(self.config.rpc.shutdown_timeout)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hsmd", description="The Host Storage Manager daemon.")
    parser.add_argument("--config", help=f"hsm.conf to read (default: {hsmconfig.DEFAULT_PATH} if it exists)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="overrides [rpc] host and port")
    parser.add_argument("--state-dir", metavar="DIR", help="overrides [irs] state_dir")
    parser.add_argument("--version", action="version", version=f"hsmd {hsm.__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        config = load_config(args)
        log_path = logsetup.setup(config)
    except (ConfigError, OSError) as e:
        print(f"hsmd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    log.info("hsmd %s starting (config %s, log %s)", hsm.__version__, config.source or "built-in", log_path)
    if os.geteuid() == 0:
        log.warning("hsmd runs as root: fine by hand for development; the packaged unit runs it as user hsm, "
                    "and supervdsmd does what needs root")
    try:
        hooks.run_hooks(config.irs.hooks_dir, hooks.BEFORE_START, config.irs.hook_timeout)
        os.environ["SANLOCK_RUN_DIR"] = config.sanlock.run_dir  # the binding reads it once, at its first call
        service = Service(config)
    except (HookError, HsmError, OSError) as e:
        log.error("hsmd cannot start: %s", e)
        print(f"hsmd: cannot start: {e}", file=sys.stderr)
        return EXIT_START
    serving = threading.Thread(target=service.server.serve_forever, name="rpc-server", daemon=True)
    serving.start()
    host, port = service.server.address
    log.info("Serving XML-RPC on %s:%d (%s)", host, port, "TLS" if config.rpc.ssl else "plain")
    if not config.rpc.ssl:
        log.warning("TLS is off ([rpc] ssl = false): plain XML-RPC on loopback %s:%d, for development and tests",
                    host, port)
    if config.rpc.unix_socket:
        log.info("Serving XML-RPC on Unix socket %s (mode %04o, group %s, uids %s)", config.rpc.unix_socket,
                 config.rpc.unix_socket_mode, config.rpc.unix_socket_group or "hsmd's own",
                 ", ".join(config.rpc.allowed_uids) or "none listed")
    sdnotify.notify("READY=1\nSTATUS=serving")
    # Wake often: a signal that the kernel hands to another thread runs its Python handler
    # only when the main thread next runs bytecode.
    next_expiry = time.monotonic() + EXPIRY_INTERVAL
    while not stopping.wait(0.2):
        if time.monotonic() >= next_expiry:
            service.expire()
            next_expiry = time.monotonic() + EXPIRY_INTERVAL
    log.info("Stopping: finishing calls in flight")
    sdnotify.notify("STOPPING=1")
    service.stop()
    serving.join(config.rpc.shutdown_timeout)
    try:
        hooks.run_hooks(config.irs.hooks_dir, hooks.AFTER_STOP, config.irs.hook_timeout)
    except HookError as e:
        log.error("%s", e)
    log.info("hsmd stopped")
    logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
