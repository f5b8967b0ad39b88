"""Hosts of a cluster on one machine, all on one shared repository (issue 15's tests and bench/leases.py).

A host is what a machine of an oVirt cluster runs: its own sanlock daemon (unprivileged, its own run
dir: sanlock ties leases to a daemon, so one daemon stands for one host), its own supervdsmd and hsmd
with `[sanlock] host_id` N.

- posixfs-1 (`cluster`): each host mounts the one export (a bind mount, through its supervdsmd) under its
  own repository root, as NFS clients mount one export, and connects the repository there.
- block-1 (`block_cluster`): every host sees the same loop devices as its LUNs. Its supervdsmd runs LVM with
  an LVM_SYSTEM_DIR whose lvm.conf turns activation off (tests/conftest.py `lvm_dir`), and its hsmd uses LVs
  through loop devices (`[irs] lv_activation = loop`). Such an activation is machine-wide here (supervdsmd
  reuses the loop device already over an LV), unlike on real hosts: no host may deactivate what another
  still uses, so a test never disconnects one host while another uses the repository.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from hsm.leases.lockspace import WRITER
from tests.hsmd import Hsmd
from tests.images_helpers import code, ok, wait_image
from tests.supervdsmd import Supervdsmd
from tests.waiting import wait_for

CID = "shared"  # the posixfs-1 repository's id, and its connection's
BLOCK_ID = "blk"  # the block-1 repository's id
IO_TIMEOUT = 1  # sanlock's io timeout in these tests: a dead host is taken for dead after 8 s + 60 s
HOST_DEAD_AFTER = 8 * IO_TIMEOUT + 60  # how long sanlock takes a host whose delta lease stopped for alive
MiB = 1 << 20


def bind_uri(path: str) -> str:
    return f"posixfs://?spec={path}&vfsType=none&options=bind"


class Host:
    """One host on the posixfs-1 `export`, or, given `lvm_dir`, one host of a block-1 repository."""

    def __init__(self, top: pathlib.Path, host_id: int, export: pathlib.Path | None = None,
                 hsmd_config: dict | None = None, lvm_dir: str | None = None):
        self.host_id = host_id
        self.root = top / f"host{host_id}"
        self.root.mkdir()
        self.run_dir = self.root / "sanlock"
        self.run_dir.mkdir()
        self.run_dir.chmod(0o755)
        self.export = export
        self.lvm_dir = lvm_dir
        self.repo_id, self.format = (CID, "posixfs-1") if lvm_dir is None else (BLOCK_ID, "block-1")
        self.repository = self.root / "rhev"
        self.sanlock: subprocess.Popen | None = None
        mounts = {"mount_sources": str(export.parent)} if export is not None else {}
        self.supervdsmd = Supervdsmd(str(self.root / "sv"), config={"irs": {"repository": str(self.repository)}},
                                     env=None if lvm_dir is None else {"LVM_SYSTEM_DIR": lvm_dir}, **mounts)
        config = {"supervdsm": {"socket": self.supervdsmd.socket},
                  "sanlock": {"run_dir": str(self.run_dir), "io_timeout": IO_TIMEOUT, "host_id": host_id},
                  "irs": {"repository": str(self.repository), "sd_health_check_delay": 0.5},
                  "connections": {"monitor_interval": 0.5}}
        if lvm_dir is not None:
            config["irs"]["lv_activation"] = "loop"
        for section, options in (hsmd_config or {}).items():
            config.setdefault(section, {}).update(options)
        (self.root / "hsmd").mkdir()
        self.hsmd = Hsmd(str(self.root / "hsmd"), config=config)
        self.proxy = None

    @property
    def sanlock_env(self) -> dict:
        return {**os.environ, "SANLOCK_RUN_DIR": str(self.run_dir), "SANLOCK_PRIVILEGED": "0"}

    def start(self) -> Host:
        self.start_sanlock()
        self.supervdsmd.start()
        self.start_hsmd()
        return self

    def start_sanlock(self) -> None:
        """This host's sanlock daemon (again, after a test stopped it)."""
        self.sanlock = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root",
                                         "-e", f"hsmtest-host{self.host_id}"], env=self.sanlock_env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: (self.run_dir / "sanlock.sock").exists(), timeout=10, what="sanlock's socket")

    def start_hsmd(self) -> None:
        self.hsmd.start()
        self.proxy = self.hsmd.proxy(timeout=120)

    def mount(self) -> None:
        ok(self.proxy.manageStorageServer(bind_uri(str(self.export)), CID))
        wait_for(lambda: ok(self.proxy.getStorageServerList())["servers"][CID]["connected"], timeout=60,
                 what=f"host {self.host_id}'s mount")

    def connect(self, params: dict) -> None:
        """Connect the repository and wait until this host has joined its lockspace."""
        self.ask_to_connect(params)
        self.wait_joined()

    def ask_to_connect(self, params: dict) -> None:
        """Connect the repository; joining its lockspace goes on after the answer."""
        ok(self.proxy.connectStorageRepository(self.repo_id, self.format, params, {}))

    def wait_joined(self, timeout: float = 120) -> None:
        wait_for(lambda: self.leases().get("joined"), timeout=timeout, what=f"host {self.host_id}'s join")

    def leases(self) -> dict:
        return ok(self.proxy.getStorageRepositoryList())["repos"].get(self.repo_id, {}).get("leases", {})

    def freeze(self) -> list[int]:
        """Stop (SIGSTOP) its sanlock daemon, hsmd and hsmd's children (the I/O helper that may hold the writer
        lease) at once: the host stands still until thaw() or die(). Answers their pids."""
        assert self.sanlock is not None and self.hsmd.process is not None
        pids = [self.sanlock.pid, self.hsmd.process.pid, *descendants(self.hsmd.process.pid)]
        signal_all(pids, signal.SIGSTOP)
        return pids

    def thaw(self, frozen: list[int]) -> None:
        signal_all(frozen, signal.SIGCONT)

    def die(self, frozen: list[int] | None = None) -> None:
        """The host is gone in one instant: its sanlock daemon, hsmd and hsmd's children all stopped (or the
        ones `frozen` stopped), then killed -9. Its delta lease stops renewing and a lease it held stays on
        storage until sanlock calls the host dead (killing hsmd first would let the daemon, alive for that
        moment, release the lease of the helper that died with hsmd)."""
        signal_all(self.freeze() if frozen is None else frozen, signal.SIGKILL)
        self.hsmd.kill()
        assert self.sanlock is not None
        self.sanlock.wait()

    def close(self) -> None:
        """Kill its processes. Nothing is disconnected nor deactivated: a block-1 test detaches the loop devices
        over its LVs itself (tests/block_helpers.py `detach_loops_over`)."""
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


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


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


@contextlib.contextmanager
def started(count: int, make: Callable[[int], Host]) -> Iterator[list[Host]]:
    """Hosts 1 to `count` (`make(host_id)`), started; all closed if anything in the block fails."""
    hosts: list[Host] = []
    try:
        for host_id in range(1, count + 1):
            hosts.append(make(host_id).start())
        yield hosts
    except BaseException:
        for host in hosts:
            host.close()
        raise


def cluster(top: pathlib.Path, count: int, hsmd_config: dict | None = None) -> tuple[list[Host], dict]:
    """`count` hosts on one new posixfs-1 repository, all connected and joined: (hosts, its params).
    Host 1 makes the repository. The caller closes the hosts."""
    export = top / "export"
    export.mkdir()
    params = {"connectionId": CID, "subdir": "repo"}
    with started(count, lambda host_id: Host(top, host_id, export, hsmd_config)) as hosts:
        for host in hosts:
            host.mount()
        ok(hosts[0].proxy.createStorageRepository("posixfs-1", params, {}))
        for host in hosts:
            host.ask_to_connect(params)
        for host in hosts:
            host.wait_joined()
    return hosts, params


def block_cluster(top: pathlib.Path, count: int, pvs: list[str], lvm_dir: str,
                  hsmd_config: dict | None = None) -> tuple[list[Host], dict]:
    """`count` hosts on one new block-1 repository, a VG on `pvs`, all connected and joined: (hosts, its
    connect params). Host 1 makes the repository; each host connects once the one before has joined, so that
    two supervdsmd never activate one LV at once (each would attach a loop device of its own). The caller
    closes the hosts, then detaches the loop devices over the LVs."""
    params = {"vgName": f"hsmtest{uuid.uuid4().hex[:8]}"}
    with started(count, lambda host_id: Host(top, host_id, hsmd_config=hsmd_config, lvm_dir=lvm_dir)) as hosts:
        ok(hosts[0].proxy.createStorageRepository("block-1", {**params, "devices": pvs}, {}))
        for host in hosts:
            host.connect(params)
    return hosts, params


# -- what the tests of many hosts check --------------------------------------------------------------------------

def live_ids(host: Host) -> set[str]:
    return set(ok(host.proxy.getImageList(host.repo_id, {}))["images"])


def create_and_remove(hosts: list[Host], clients: int, verbs: int, seed: int) -> tuple[set[str], set[str]]:
    """`clients` clients a host create 1 MiB disks and remove disks at random, `verbs` verbs each, all at once; a
    client removes any disk created so far, mostly one another host made (so the host it asks must know what
    the others committed). Answers (live, removed): the disks acknowledged and not removed, and those removed;
    any verb that failed fails the caller."""
    live: set[str] = set()
    removable: list[str] = []
    removed: set[str] = set()
    lock = threading.Lock()
    errors: list[str] = []

    def client(host: Host, seed: int) -> None:
        rng = random.Random(seed)
        proxy = host.hsmd.proxy(timeout=120)
        try:
            for _ in range(verbs):
                with lock:
                    image_id = removable.pop(rng.randrange(len(removable))) \
                        if removable and rng.random() < 0.3 else ""
                if image_id:
                    wait_image(proxy, host.repo_id, image_id)  # a disk is removed once its create has run
                    ok(proxy.removeImage(host.repo_id, image_id, {}))
                    with lock:
                        live.discard(image_id)
                        removed.add(image_id)
                else:
                    image_id = ok(proxy.createVirtualDisk(host.repo_id, str(MiB), "", {}, {}))["imageId"]
                    with lock:
                        assert image_id not in live and image_id not in removed, f"{image_id} handed out twice"
                        live.add(image_id)
                        removable.append(image_id)
        except BaseException as e:
            errors.append(f"host {host.host_id}: {e!r}")

    threads = [threading.Thread(target=client, args=(host, seed + 10 * host.host_id + n))
               for host in hosts for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    assert len(live) + 2 * len(removed) == clients * verbs * len(hosts)
    return live, removed


def fix_refused(host: Host, image_id: str, worker: Host) -> None:
    """`host`'s check offers the fix of `image_id`, whose intent `worker` left, and `host` refuses to run it: 203
    (VolumeIsBusy) naming `worker`, which sanlock takes for alive."""
    fixes = {fix["imageId"]: fix for fix in ok(host.proxy.checkStorageRepository(host.repo_id))["fixes"]}
    assert image_id in fixes, fixes
    asked = time.monotonic()
    answer = host.proxy.fixStorageRepository(host.repo_id, fixes[image_id]["fix"], {})
    assert code(answer) == 203 and f"host {worker.host_id}" in answer["status"]["message"], \
        f"{answer}, after {time.monotonic() - asked:.1f} s"


def writer_holder(space: str, path: str, offset: int) -> int:
    """The host holding the metadata-writer lease at `offset` of `path`, read from the disk (`sanlock direct`,
    no daemon), or 0: sanlock zeroes the leader's timestamp when the holder lets it go."""
    done = subprocess.run(["sanlock", "direct", "read_leader", "-r", f"{space}:{WRITER.decode()}:{path}:{offset}"],
                          capture_output=True, text=True, check=True)
    leader = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return int(leader["owner_id"]) if int(leader["timestamp"]) else 0


def die_committing(host: Host, at_least: int = 5, holding: Callable[[], int] | None = None) -> list[str]:
    """`host` creates 1 MiB disks one after another (each with its fix: lease taken, records and volumes
    written) and, once it has acknowledged `at_least`, dies (Host.die()), perhaps in the middle of a commit
    holding the writer lease. Given `holding` (writer_holder of the repository's lease), it dies holding it:
    frozen until the lease on the disk is its own (thawed again between tries). Answers the disks it
    acknowledged."""
    acknowledged: list[str] = []
    stop = threading.Event()

    def keep_creating() -> None:
        while not stop.is_set():
            try:
                acknowledged.append(ok(host.proxy.createVirtualDisk(host.repo_id, str(MiB), "", {}, {}))["imageId"])
            except Exception:  # the host died under the call: not acknowledged
                return

    def frozen_holding() -> list[int] | None:
        frozen = host.freeze()
        if holding is None or holding() == host.host_id:
            return frozen
        host.thaw(frozen)
        return None
    creator = threading.Thread(target=keep_creating)
    creator.start()
    frozen: list[int] | None = None
    try:
        wait_for(lambda: len(acknowledged) >= at_least, timeout=60, what=f"host {host.host_id} to commit more disks")
        frozen = wait_for(frozen_holding, timeout=60, poll=0.05,
                          what=f"host {host.host_id} frozen while holding the writer lease")
    finally:
        host.die(frozen)
        stop.set()
        creator.join(30)
    return list(acknowledged)


def daemon_lost_then_back(one: Host, two: Host, stored: Callable[[], object], refused: set[int]) -> tuple[str, str]:
    """Host 2's sanlock daemon dies while its hsmd runs: its createVirtualDisk answers one of `refused` and
    `stored()` (what the repository holds, read from storage) does not change, while host 1 commits on and host
    2's repository list shows the lockspace lost; once the daemon is back, host 2 joins again and commits, and
    host 1 sees it. Answers (host 1's disk, host 2's)."""
    before = stored()
    assert two.sanlock is not None
    two.sanlock.kill()
    two.sanlock.wait()
    answer = two.proxy.createVirtualDisk(two.repo_id, str(MiB), "", {}, {"autoFix": False})
    assert code(answer) in refused, answer
    assert stored() == before
    made = ok(one.proxy.createVirtualDisk(one.repo_id, str(MiB), "", {}, {}))["imageId"]
    wait_image(one.proxy, one.repo_id, made)
    lost = wait_for(lambda: two.leases() if not two.leases()["joined"] else None, timeout=30,
                    what="host 2's repository list to show the lockspace lost")
    assert lost["error"], lost
    two.start_sanlock()
    two.wait_joined(timeout=180)  # the delta lease its dead daemon held must expire first
    again = ok(two.proxy.createVirtualDisk(two.repo_id, str(MiB), "", {}, {}))["imageId"]
    wait_image(two.proxy, two.repo_id, again)
    wait_for(lambda: {made, again} <= live_ids(one), timeout=30, what="host 1 to see host 2's disk")
    return made, again


def lease_moves(one: Host, two: Host, image_id: str) -> None:
    """With the image prepared on host 1 ([irs] use_volume_leases: its volume lease held there), host 2's
    prepareImage answers 651 and its removeImage 203, both naming host 1; after host 1's teardownImage host 2
    prepares it, and then host 1's prepareImage answers 651."""
    refused = two.proxy.prepareImage(two.repo_id, image_id)
    assert code(refused) == 651 and f"host {one.host_id}" in refused["status"]["message"], refused
    refused = two.proxy.removeImage(two.repo_id, image_id, {})
    assert code(refused) == 203 and f"host {one.host_id}" in refused["status"]["message"], refused
    ok(one.proxy.teardownImage(one.repo_id, image_id))
    ok(two.proxy.prepareImage(two.repo_id, image_id))
    assert code(one.proxy.prepareImage(one.repo_id, image_id)) == 651


def settle(hosts: list[Host], expected: set[str]) -> None:
    """Every host lists exactly `expected`; each image optimized; check on every host offers nothing."""
    for host in hosts:
        wait_for(lambda host=host: live_ids(host) == expected, timeout=60,
                 what=lambda host=host: f"host {host.host_id} lists {len(expected)} images: "
                                        f"{sorted(live_ids(host) ^ expected)[:5]} differ")
    one = hosts[0]
    for image_id in expected:
        wait_image(one.proxy, one.repo_id, image_id, timeout=240)

    def clean() -> bool:
        fixes = ok(one.proxy.checkStorageRepository(one.repo_id))["fixes"]
        for fix in fixes:  # what the removals left to clean; another host may be on it already
            assert "fix" in fix, fix  # nothing unfixable
            one.proxy.fixStorageRepository(one.repo_id, fix["fix"], {})
        return not fixes
    wait_for(clean, timeout=240, poll=0.5, what="check on host 1 to offer nothing")
    for host in hosts[1:]:
        wait_for(lambda host=host: not ok(host.proxy.checkStorageRepository(host.repo_id))["fixes"], timeout=60,
                 what=f"check on host {host.host_id} to offer nothing")
