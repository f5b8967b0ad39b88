"""Hosts of a cluster on one machine, all on one posixfs-1 repository (issue 15's tests and bench/leases.py).

A host is what a machine of an oVirt cluster runs: its own sanlock daemon (unprivileged, its own run
dir: sanlock ties leases to a daemon, so one daemon stands for one host), its own supervdsmd and hsmd
with `[sanlock] host_id` N. Each host mounts the one export (a bind mount, through its supervdsmd) under
its own repository root, as NFS clients mount one export, and connects the repository there.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess

from tests.hsmd import Hsmd
from tests.images_helpers import ok
from tests.supervdsmd import Supervdsmd
from tests.waiting import wait_for

CID = "shared"
IO_TIMEOUT = 1  # sanlock's io timeout in these tests: a dead host is taken for dead after 8 s + 60 s


def bind_uri(path: str) -> str:
    return f"posixfs://?spec={path}&vfsType=none&options=bind"


class Host:
    def __init__(self, top: pathlib.Path, host_id: int, export: pathlib.Path, hsmd_config: dict | None = None):
        self.host_id = host_id
        self.root = top / f"host{host_id}"
        self.root.mkdir()
        self.run_dir = self.root / "sanlock"
        self.run_dir.mkdir()
        self.run_dir.chmod(0o755)
        self.export = export
        self.repository = self.root / "rhev"
        self.sanlock: subprocess.Popen | None = None
        self.supervdsmd = Supervdsmd(str(self.root / "sv"), config={"irs": {"repository": str(self.repository)}},
                                     mount_sources=str(export.parent))
        config = {"supervdsm": {"socket": self.supervdsmd.socket},
                  "sanlock": {"run_dir": str(self.run_dir), "io_timeout": IO_TIMEOUT, "host_id": host_id},
                  "irs": {"repository": str(self.repository), "sd_health_check_delay": 0.5},
                  "connections": {"monitor_interval": 0.5}}
        for section, options in (hsmd_config or {}).items():
            config.setdefault(section, {}).update(options)
        (self.root / "hsmd").mkdir()
        self.hsmd = Hsmd(str(self.root / "hsmd"), config=config)
        self.proxy = None

    @property
    def sanlock_env(self) -> dict:
        return {**os.environ, "SANLOCK_RUN_DIR": str(self.run_dir), "SANLOCK_PRIVILEGED": "0"}

    def start(self) -> Host:
        self.sanlock = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root",
                                         "-e", f"hsmtest-host{self.host_id}"], env=self.sanlock_env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: (self.run_dir / "sanlock.sock").exists(), timeout=10, what="sanlock's socket")
        self.supervdsmd.start()
        self.start_hsmd()
        return self

    def start_hsmd(self) -> None:
        self.hsmd.start()
        self.proxy = self.hsmd.proxy(timeout=120)

    def mount(self) -> None:
        ok(self.proxy.manageStorageServer(bind_uri(str(self.export)), CID))
        wait_for(lambda: ok(self.proxy.getStorageServerList())["servers"][CID]["connected"], timeout=60,
                 what=f"host {self.host_id}'s mount")

    def connect(self, params: dict) -> None:
        """Connect the repository and wait until this host has joined its lockspace."""
        ok(self.proxy.connectStorageRepository(CID, "posixfs-1", params, {}))
        wait_for(lambda: self.leases().get("joined"), timeout=120, what=f"host {self.host_id}'s join")

    def leases(self) -> dict:
        return ok(self.proxy.getStorageRepositoryList())["repos"].get(CID, {}).get("leases", {})

    def die(self) -> None:
        """The host is gone in one instant: its sanlock daemon, hsmd and hsmd's children (the I/O helper that
        may hold the writer lease) all stopped, then killed -9. Its delta lease stops renewing and a lease it
        held stays on storage until sanlock calls the host dead (killing hsmd first would let the daemon,
        alive for that moment, release the lease of the helper that died with hsmd)."""
        assert self.sanlock is not None and self.hsmd.process is not None
        pids = [self.sanlock.pid, self.hsmd.process.pid, *descendants(self.hsmd.process.pid)]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        self.hsmd.kill()
        self.sanlock.wait()

    def close(self) -> None:
        self.hsmd.kill()
        self.supervdsmd.kill()
        if self.sanlock is not None and self.sanlock.poll() is None:
            subprocess.run(["sanlock", "client", "shutdown", "-f", "1"], env=self.sanlock_env, capture_output=True)
            try:
                self.sanlock.wait(10)
            except subprocess.TimeoutExpired:
                self.sanlock.kill()
        subprocess.run(f"grep -o ' {self.repository}/mnt/[^ ]*' /proc/mounts | xargs -r -n1 umount -l",
                       shell=True, check=False)


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (hsmd's I/O helpers, qemu-img runs), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def cluster(top: pathlib.Path, count: int, hsmd_config: dict | None = None) -> tuple[list[Host], dict]:
    """`count` hosts on one new posixfs-1 repository, all connected and joined: (hosts, its params).
    Host 1 makes the repository. The caller closes the hosts."""
    export = top / "export"
    export.mkdir()
    hosts: list[Host] = []
    try:
        for host_id in range(1, count + 1):
            hosts.append(Host(top, host_id, export, hsmd_config).start())
        params = {"connectionId": CID, "subdir": "repo"}
        for host in hosts:
            host.mount()
        ok(hosts[0].proxy.createStorageRepository("posixfs-1", params, {}))
        for host in hosts:
            ok(host.proxy.connectStorageRepository(CID, "posixfs-1", params, {}))
        for host in hosts:
            wait_for(lambda host=host: host.leases().get("joined"), timeout=120, what=f"host {host.host_id}'s join")
    except BaseException:
        for host in hosts:
            host.close()
        raise
    return hosts, params
