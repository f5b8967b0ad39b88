"""Driving images on a real hsmd, and looking at their volumes with the real qemu tools."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from hsm.storage.block import AREAS
from tests.block_helpers import MetadataSlots, detach_loops_over, lv_names
from tests.lvm_helpers import raw_lvm
from tests.waiting import wait_for

MiB = 1 << 20
GiB = 1 << 30


def ok(answer: dict) -> dict:
    assert answer["status"]["code"] == 0, answer
    return answer


def code(answer: dict) -> int:
    return answer["status"]["code"]


def wait_image(proxy, repo: str, image_id: str, timeout: float = 180.0, states=("optimized",),
               poll: float = 0.02) -> dict:
    """Wait until no fix works on the image and it is in one of `states`; returns its info.
    A fix that ended in an error fails the wait at once."""
    seen: list[dict] = [{}]

    def settled() -> bool:
        image = seen[0] = ok(proxy.getImageStatus(repo, image_id))["image"]
        if image["lastError"] and not image["tasks"] and image["state"] not in states:
            raise AssertionError(f"{image_id} failed: {image}")
        return not image["tasks"] and image["state"] in states

    wait_for(settled, timeout, what=lambda: f"{image_id} in {states}: still {seen[0]}", poll=poll)
    return ok(proxy.getImageInfo(repo, image_id))["image"]


def new_disk(proxy, repo: str = "local", size: int = GiB, base: str = "", **options) -> str:
    image_id = ok(proxy.createVirtualDisk(repo, str(size), base, {}, options))["imageId"]
    if options.get("autoFix", True):
        wait_image(proxy, repo, image_id, states=("optimized", "degraded"))
    return image_id


def new_snapshot(proxy, disk: str, repo: str = "local") -> str:
    image_id = ok(proxy.createSnapshot(repo, disk, {}, {}))["imageId"]
    wait_image(proxy, repo, image_id)
    return image_id


def top_path(proxy, repo: str, image_id: str) -> str:
    return ok(proxy.getImageInfo(repo, image_id))["image"]["volumes"][0]["path"]


def qemu_write(path: str, pattern: int, offset: int, length: int, fmt: str = "qcow2") -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", path],
                   check=True, capture_output=True)


def qemu_reads(path: str, pattern: int, offset: int, length: int) -> bool:
    """Whether the image (through its whole chain) holds `pattern` in that range."""
    done = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pattern} {offset} {length}", path],
                          capture_output=True, text=True)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def backing_chain(path: str) -> list[dict]:
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def qemu_check(path: str) -> None:
    """qemu-img check finds no corruption. Leaked clusters (exit 3) are allowed: a qemu-img killed
    with hsmd in the middle of a write leaves some, which waste space and harm no data."""
    done = subprocess.run(["qemu-img", "check", "-U", "-f", "qcow2", path], capture_output=True)
    if done.returncode not in (0, 3):
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)


def volume_files(repo_path: str) -> set[str]:
    return set(os.listdir(os.path.join(repo_path, "volumes")))


def local_path(daemon) -> str:
    return os.path.join(daemon.state_dir, "local")


def own_data(path: str) -> int:
    """Bytes of data the volume at `path` holds itself (qemu-img map, depth 0), whatever its chain holds below."""
    mapped = json.loads(subprocess.run(["qemu-img", "map", "-U", "--output=json", path], capture_output=True,
                                       text=True, check=True).stdout)
    return sum(extent["length"] for extent in mapped if extent["depth"] == 0 and extent["data"])


# The same image tests on every repository format ---------------------------------------------------------------
#
# A test takes `repo` (a Repo of its format, connected on its own hsmd), or `make_repo` to start that hsmd with
# extra configuration; both are parametrized by format in the test modules:
#
#     @pytest.fixture(params=FORMATS)
#     def make_repo(request):
#         yield from repositories(request)
#
# localfs-1: hsmd's embedded default repository 'local'. block-1: a VG of its own on a sparse 20 GiB loop device,
# connected as 'blk' on an hsmd whose LVM and activation go through a real supervdsmd (tests/conftest.py's
# `lvm_supervdsmd`; LVs used through loop devices). A Repo tells what its storage holds the way a user would look:
# the volume files and record files of a localfs-1 repository, the LVs and metadata slots of a block-1 one.

LOCALFS, BLOCK = "localfs-1", "block-1"
FORMATS = (LOCALFS, BLOCK)
PV_MB = 20 * 1024


def files_only(reason: str):
    """Mark a test of `make_repo` or `repo` whose subject exists only in a file repository: its block-1 variant is
    skipped, with `reason`, before anything is set up."""
    return pytest.mark.parametrize("make_repo", [LOCALFS, pytest.param(BLOCK, marks=pytest.mark.skip(
        reason=f"files only: {reason}"))], indirect=True)


class Host:
    """One hsmd of a test and the repositories connected on it, connected again after each restart."""

    def __init__(self, daemon, make_block=None) -> None:
        self.daemon = daemon
        self.repos: list[Repo] = []
        self.proxy = None
        self.make_block = make_block  # (host, name) -> a new block-1 repository on it

    def start(self):
        """Start hsmd (again), connect its block-1 repositories again (hsmd connects only its own default at
        start-up); a new client."""
        self.daemon.start()
        self.proxy = self.daemon.proxy()
        for repo in self.repos:
            repo.reconnect()
        return self.proxy


class Repo:
    """A repository of a test's format: its id on its hsmd, and what its storage holds."""

    format = LOCALFS
    thin = True  # the space a volume takes follows what is written into it

    def __init__(self, host: Host, repo_id: str, path: str) -> None:
        self.host = host
        self.id = repo_id
        self.path = path  # its folder
        host.repos.append(self)

    @property
    def daemon(self):
        return self.host.daemon

    @property
    def proxy(self):
        return self.host.proxy

    def start(self):
        """Start its hsmd again (after kill or stop) with its repositories connected; a new client."""
        return self.host.start()

    def reconnect(self) -> None:
        """A file repository other than the default is connected again by its callers (as a block-1 one)."""
        if self.id != "local":
            ok(self.proxy.connectStorageRepository(self.id, self.format, {"path": self.path}, {}))

    def second(self, name: str = "second") -> Repo:
        """Another repository of the same format on the same hsmd, connected as `name`."""
        path = os.path.join(os.path.dirname(self.daemon.root), name)
        os.mkdir(path)
        ok(self.proxy.createStorageRepository(LOCALFS, {"path": path}, {}))
        ok(self.proxy.connectStorageRepository(name, LOCALFS, {"path": path}, {}))
        return Repo(self.host, name, path)

    @contextlib.contextmanager
    def opened(self, image_id: str, readonly: bool | None = None) -> Iterator[str]:
        """The image prepared for use here (its path), torn down after: how a user reads and writes one."""
        options = {} if readonly is None else {"readonly": readonly}
        path = ok(self.proxy.prepareImage(self.id, image_id, options))["path"]
        try:
            yield path
        finally:
            ok(self.proxy.teardownImage(self.id, image_id))

    def written_disk(self, pattern: int, size: int = GiB, length: int = MiB) -> str:
        """A new disk with `pattern` written over its first `length` bytes (through prepareImage)."""
        disk = new_disk(self.proxy, self.id, size=size)
        with self.opened(disk) as path:
            qemu_write(path, pattern, 0, length)
        return disk

    # -- what storage holds ---------------------------------------------------

    def volumes(self) -> set[str]:
        """The ids of the volumes storage holds (a file each)."""
        return {name.split(".")[0] for name in os.listdir(os.path.join(self.path, "volumes"))}

    def records(self) -> set[str]:
        """The ids of the images storage holds a record of (a file each)."""
        return {name[:-len(".json")] for name in os.listdir(os.path.join(self.path, "images"))
                if name.endswith(".json")}

    def record(self, image_id: str) -> dict:
        with open(self._record_path(image_id)) as f:
            return json.load(f)

    def write_record(self, image_id: str, record: dict | bytes) -> None:
        """Replace an image's record (a dict, or the bytes to store) behind hsmd's back, as another host, an older
        hsm or an admin would: into its file, or into its slot, which keeps naming the image."""
        with open(self._record_path(image_id), "wb") as f:
            f.write(record if isinstance(record, bytes) else json.dumps(record).encode())

    @property
    def volumes_folder(self) -> str:
        """Where the paths of its volumes are: its volumes/ folder, or a block-1 repository's links folder."""
        return os.path.join(self.path, "volumes")

    def lose_volume(self, volume_id: str) -> None:
        """Remove a volume behind hsmd's back, as an admin's mistake would."""
        [name] = [name for name in os.listdir(os.path.join(self.path, "volumes")) if name.split(".")[0] == volume_id]
        os.unlink(os.path.join(self.path, "volumes", name))

    def _record_path(self, image_id: str) -> str:
        return os.path.join(self.path, "images", image_id + ".json")


class BlockRepo(Repo):
    format = BLOCK
    thin = False  # under `lv_activation = loop` every LV takes the full size its volume can take

    def __init__(self, host: Host, repo_id: str, vg: str, devices: list[str], repo_uuid: str, lvm_dir: str) -> None:
        super().__init__(host, repo_id, "")
        self.vg, self.devices, self.uuid, self.lvm_dir = vg, devices, repo_uuid, lvm_dir

    def reconnect(self) -> None:
        ok(self.proxy.connectStorageRepository(self.id, BLOCK, {"vgName": self.vg}))

    def second(self, name: str = "second") -> Repo:
        """A second VG, on a loop device of its own."""
        return self.host.make_block(self.host, name)

    def volumes(self) -> set[str]:
        """The LVs of the VG but its metadata, ids and leases LVs: one per volume, named by its id."""
        return lv_names(self.lvm_dir, self.devices, self.vg) - set(AREAS)

    def records(self) -> set[str]:
        return set(self._slots().records())

    def record(self, image_id: str) -> dict:
        return json.loads(self._slots().records()[image_id])

    def write_record(self, image_id: str, record: dict | bytes) -> None:
        self._slots().write(image_id, record if isinstance(record, bytes) else json.dumps(record).encode())

    @property
    def volumes_folder(self) -> str:
        return os.path.join(self.daemon.state_dir, "block", self.id)

    def lose_volume(self, volume_id: str) -> None:
        done = raw_lvm(self.lvm_dir, self.devices, "lvremove", "-f", f"{self.vg}/{volume_id}")
        assert done.returncode == 0, done.stderr

    def _slots(self) -> MetadataSlots:
        return MetadataSlots(self.lvm_dir, self.devices, self.vg, self.uuid)


def repositories(request) -> Iterator:
    """The body of a `make_repo` fixture parametrized by format: make_repo(config=None) starts an hsmd (with that
    extra configuration) and answers the Repo of the test's format on it."""
    fmt = request.param
    make_hsmd = request.getfixturevalue("make_hsmd")
    hosts: list[Host] = []
    devices: list[str] = []
    if fmt == BLOCK:
        supervdsmd = request.getfixturevalue("lvm_supervdsmd")
        loops, lvm_dir = request.getfixturevalue("loops"), request.getfixturevalue("lvm_dir")

    def make_block(host: Host, name: str) -> Repo:
        pv = loops(PV_MB)
        devices.append(pv)
        vg = f"hsmtest{uuid.uuid4().hex[:8]}"
        proxy = host.proxy
        repo_uuid = ok(proxy.createStorageRepository(BLOCK, {"vgName": vg, "devices": [pv]}))["repoUuid"]
        ok(proxy.connectStorageRepository(name, BLOCK, {"vgName": vg}))
        return BlockRepo(host, name, vg, [pv], repo_uuid, lvm_dir)

    def make(config: dict | None = None) -> Repo:
        sections = {section: dict(options) for section, options in (config or {}).items()}
        if fmt == BLOCK:
            sections.setdefault("supervdsm", {})["socket"] = supervdsmd.socket
            sections.setdefault("irs", {}).update(lv_activation="loop", sd_health_check_delay=0.2)
        host = Host(make_hsmd(f"hsmd{len(hosts)}", config=sections), make_block)
        hosts.append(host)
        host.start()
        if fmt == BLOCK:
            return make_block(host, "blk")
        return Repo(host, "local", os.path.join(host.daemon.state_dir, "local"))

    yield make
    for host in hosts:
        host.daemon.kill()
    detach_loops_over(devices)  # the loop devices of activated LVs, over the PVs
    for device in devices:  # each took a GiB or more (its metadata LV zeroed): given back when `loops` detaches it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backing_file(device))


def backing_file(device: str) -> str:
    """The file a loop device is attached to."""
    with open(f"/sys/block/{os.path.basename(device)}/loop/backing_file") as f:
        return f.read().strip()
