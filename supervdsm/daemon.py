"""supervdsmd: the root helper shared by VDSM and hsmd, on a Unix socket."""

from __future__ import annotations

import argparse
import grp
import logging
import os
import pwd
import signal
import sys
import threading

import hsm
from hsm import config as hsmconfig
from hsm import logsetup
from hsm.errors import ConfigError
from supervdsm.server import SupervdsmServer
from supervdsm.verbs import make_verbs

log = logging.getLogger("supervdsm")


def _uids(names: list[str]) -> set[int]:
    uids = set()
    for name in names:
        try:
            uids.add(int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise ConfigError(f"[supervdsm] allowed_uids: no user {name!r}") from None
    return uids


def _gid(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"[supervdsm] group: no group {name!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervdsmd", description="The privileged storage helper.")
    parser.add_argument("--config", help=f"hsm.conf to read (default: {hsmconfig.DEFAULT_PATH} if it exists)")
    parser.add_argument("--socket", help="overrides [supervdsm] socket")
    parser.add_argument("--version", action="version", version=f"supervdsmd {hsm.__version__}")
    args = parser.parse_args(argv)
    overrides = {("supervdsm", "socket"): args.socket} if args.socket else {}
    try:
        config = hsmconfig.load(hsmconfig.default_path(args.config), overrides)
        allowed = _uids(config.supervdsm.allowed_uids)
        gid = _gid(config.supervdsm.group)
        logsetup.setup(config, log_file="supervdsm.log", log_dir=config.supervdsm.log_dir)
    except (ConfigError, OSError) as e:
        print(f"supervdsmd: {e}", file=sys.stderr)
        return 2
    socket_path = config.supervdsm.socket
    os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    server = SupervdsmServer(socket_path, make_verbs(config), allowed, mode=config.supervdsm.mode, gid=gid)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    threading.Thread(target=server.serve_forever, name="supervdsm-server", daemon=True).start()
    log.info("supervdsmd %s serving %s for uids %s", hsm.__version__, socket_path, sorted(allowed))
    while not stopping.wait(0.2):  # see hsm.daemon: a signal taken by another thread waits for us
        pass
    server.shutdown()
    server.server_close()
    os.unlink(socket_path)
    log.info("supervdsmd stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
