"""The array verbs (libstoragemgmt) through a real hsmd over XML-RPC, and hsm.arrays.Arrays in process.

libstoragemgmt is not installable on these machines, so the array in these tests is always the
FAKE simulator in tests/fake_lsm (a stand-in for lsm's sim:// plugin, following lsm's documented
client API): hsmd imports it through PYTHONPATH, this process through sys.path, and the tests look
at the simulated array's state through the same fake, as another process sharing its state file.
File clones (what hsm's storage code offloads copies to) have no verb: they are tested on Arrays.
"""

from __future__ import annotations

import filecmp
import importlib
import logging
import os
import pathlib
import re
import sys
from dataclasses import dataclass

import pytest

from hsm import config as hsmconfig
from hsm.arrays import CAPABILITIES, Arrays
from hsm.errors import ArrayFsDoesNotExist, ArrayNoSupport, ArrayRequestFailed, ConfigError
from tests.hsmd import Hsmd
from tests.images_helpers import code, ok
from tests.waiting import wait_for

FAKE_LSM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_lsm")
sys.path.insert(0, FAKE_LSM)
lsm = importlib.import_module("lsm")  # the fake, never libstoragemgmt's (tests/fake_lsm/lsm/__init__.py)
fake_sim = importlib.import_module("lsm._sim")

VERBS = ("getArrayCapabilities", "refreshArrayCapabilities", "getArrayPools", "getArrayFileSystems",
         "provisionArrayVolume", "resizeArrayVolume", "deleteArrayVolume")
MIB, GIB = 2**20, 2**30


def arguments(verb: str, array_id: str, pool: str = "POOL_ID_00003", volume: str = "VOL_ID_00001") -> tuple:
    return {"provisionArrayVolume": (array_id, pool, "disk", str(GIB)),
            "resizeArrayVolume": (array_id, volume, str(2 * GIB)),
            "deleteArrayVolume": (array_id, volume)}.get(verb, (array_id,))


@dataclass
class Sim:
    """An hsmd whose [offload] arrays is one fake sim:// array, and that array's state."""

    daemon: Hsmd
    uri: str

    @property
    def proxy(self):
        return self.daemon.proxy()

    @property
    def statefile(self) -> str:
        return self.uri.split("statefile=", 1)[1]

    def client(self):
        return lsm.Client(self.uri, None, 30000)

    def volumes(self) -> dict[str, tuple[str, int]]:
        """{name: (pool id, size)} of the array's volumes, as the array itself says."""
        client = self.client()
        try:
            return {v.name: (v.pool_id, v.size_bytes) for v in client.volumes()}
        finally:
            client.close()

    def provision(self, name: str, size: int = GIB, pool: str = "POOL_ID_00003", **options) -> dict:
        return self.proxy.provisionArrayVolume(self.uri, pool, name, str(size), options)

    def read_at(self) -> float:
        return float(ok(self.proxy.getArrayCapabilities(self.uri))["readAt"])


@pytest.fixture
def sim(make_hsmd, tmp_path, monkeypatch):
    """Start an hsmd on a fresh fake simulator: sim(sim_time="0", **offload options) -> Sim."""
    monkeypatch.setenv("LSM_SIM_TIME", "0")  # what this process does on the array answers at once
    uri = f"sim://?statefile={tmp_path}/sim.json"

    def start(sim_time: str = "0", **offload) -> Sim:
        daemon = make_hsmd(config={"offload": {"arrays": uri, **offload}},
                           env={"PYTHONPATH": FAKE_LSM, "LSM_SIM_TIME": sim_time}).start()
        return Sim(daemon, uri)
    return start


def test_without_lsm_every_array_verb_answers_5016(make_hsmd, tmp_path):
    """An hsmd that cannot import lsm (the fake simulator's folder is not on its path), with a sim://
    array configured: it starts, and every array verb answers 5016, whatever the arrayId."""
    assert FAKE_LSM not in os.environ.get("PYTHONPATH", "")
    uri = f"sim://?statefile={tmp_path}/sim.json"
    daemon = make_hsmd(config={"offload": {"arrays": uri}}).start()
    proxy = daemon.proxy()
    answers = [proxy.getArrayList()] + [getattr(proxy, verb)(*arguments(verb, array_id))
                                        for verb in VERBS for array_id in (uri, "no-such-array")]
    for answer in answers:
        assert answer["status"]["code"] == 5016, answer
        assert "libstoragemgmt is not available on this host" in answer["status"]["message"]
    wait_for(lambda: "they stay unused" in daemon.log_text(), what="the refresh's warning in hsm.log")
    assert not os.path.exists(f"{tmp_path}/sim.json")


def test_list_capabilities_and_pools(sim):
    """The fake simulator's array, as getArrayList, getArrayCapabilities and getArrayPools show it."""
    s = sim()
    listed = wait_for(lambda: ok(s.proxy.getArrayList())["arrays"][s.uri]["capabilitiesReadAt"] and
                      ok(s.proxy.getArrayList())["arrays"], what="capabilities read at start")
    assert list(listed) == [s.uri]
    assert listed[s.uri]["plugin"] == "sim"
    assert listed[s.uri]["systems"] == [{"id": "sim-01", "name": "LSM simulated storage plug-in", "status": ["OK"]}]
    assert listed[s.uri]["lastError"] == {}
    caps = ok(s.proxy.getArrayCapabilities(s.uri))
    assert set(caps["capabilities"]) == set(CAPABILITIES)
    assert all(value is True for value in caps["capabilities"].values())
    assert caps["readAt"] == listed[s.uri]["capabilitiesReadAt"]
    pools = ok(s.proxy.getArrayPools(s.uri))["pools"]
    assert set(pools) == {"POOL_ID_00001", "POOL_ID_00002", "POOL_ID_00003", "POOL_ID_00004"}
    assert pools["POOL_ID_00003"] == {"name": "Pool 3", "systemId": "sim-01", "totalBytes": str(512 * GIB),
                                      "freeBytes": str(512 * GIB), "status": ["OK"], "statusInfo": "",
                                      "volumes": True, "grow": True, "shrink": True}
    assert pools["POOL_ID_00004"]["totalBytes"] == str(2 * 2**60)  # past XML-RPC's ints: a string
    assert (pools["POOL_ID_00001"]["grow"], pools["POOL_ID_00001"]["shrink"]) == (False, False)


def test_file_systems(sim, tmp_path):
    """A file system given to the fake simulator (add_filesystem), as getArrayFileSystems shows it; as
    in the sim plugin, its size comes out of its pool's free space."""
    s = sim()
    assert ok(s.proxy.getArrayFileSystems(s.uri))["filesystems"] == {}
    fs_id = fake_sim.add_filesystem(s.statefile, "exports", str(tmp_path), size=10 * GIB)
    assert fs_id == "FS_ID_00001"
    assert ok(s.proxy.getArrayFileSystems(s.uri))["filesystems"] == {
        fs_id: {"name": "exports", "poolId": "POOL_ID_00003", "systemId": "sim-01",
                "totalBytes": str(10 * GIB), "freeBytes": str(10 * GIB)}}
    assert ok(s.proxy.getArrayPools(s.uri))["pools"]["POOL_ID_00003"]["freeBytes"] == str(502 * GIB)


def test_provision_polls_the_array_job_to_completion(sim):
    """On the fake simulator with jobs of 0.5 s, provisionArrayVolume waits for the job, watching its
    percent, frees it, and answers the new volume."""
    s = sim(sim_time="0.5")
    answer = ok(s.provision("disk1", GIB + 1))
    job = answer["jobId"]
    assert answer["volume"] == {**answer["volume"], "name": "disk1", "poolId": "POOL_ID_00003",
                                "systemId": "sim-01", "size": str(GIB + 512), "enabled": True}
    assert re.fullmatch(r"[0-9a-f]{32}", answer["volume"]["vpd83"])
    assert s.volumes() == {"disk1": ("POOL_ID_00003", GIB + 512)}  # rounded up to whole 512-byte blocks
    percents = [int(p) for p in re.findall(rf"job {job} \(create 'disk1'\) at (\d+)%", s.daemon.log_text())]
    assert percents and max(percents) < 100, percents
    client = s.client()
    with pytest.raises(lsm.LsmError) as raised:
        client.job_status(job)
    assert raised.value.code == lsm.ErrorNumber.NOT_FOUND_JOB  # freed
    pools = ok(s.proxy.getArrayPools(s.uri))["pools"]
    assert pools["POOL_ID_00003"]["freeBytes"] == str(512 * GIB - GIB - 512)


def test_provision_answered_at_once_has_no_job(sim):
    """The fake simulator with LSM_SIM_TIME=0 answers (None, volume), as plugins without jobs do."""
    s = sim(sim_time="0")
    answer = ok(s.provision("now", 4096))
    assert "jobId" not in answer
    assert answer["volume"]["size"] == "4096"
    assert s.volumes() == {"now": ("POOL_ID_00003", 4096)}
    assert "jobId" not in ok(s.provision("thin", 4096, provisioning="thin"))


def test_a_taken_name_answers_name_conflict_and_a_request_id_repeats(sim):
    """The fake simulator refuses a taken name (NAME_CONFLICT), also one another process took; a
    repeated requestId answers the first call's volume without a second create."""
    s = sim()
    first = ok(s.provision("disk1", requestId="r1"))
    assert s.provision("disk1", requestId="r1") == first
    again = s.provision("disk1")
    assert code(again) == 5020
    assert "NAME_CONFLICT(50)" in again["status"]["message"]
    assert "Name 'disk1' is already in use by other volume" in again["status"]["message"]
    client = s.client()
    client.volume_create(client.pools("id", "POOL_ID_00002")[0], "outside", 4096, lsm.Volume.PROVISION_DEFAULT)
    client.close()
    assert code(s.provision("outside")) == 5020
    assert s.volumes() == {"disk1": ("POOL_ID_00003", GIB), "outside": ("POOL_ID_00002", 4096)}


def test_resize_and_delete(sim):
    """On the fake simulator with jobs: a volume grows, stays at its size, and goes."""
    s = sim(sim_time="0.2")
    volume = ok(s.provision("disk1"))["volume"]["id"]
    grown = ok(s.proxy.resizeArrayVolume(s.uri, volume, str(3 * GIB)))
    assert grown["jobId"] and grown["volume"]["size"] == str(3 * GIB)
    same = ok(s.proxy.resizeArrayVolume(s.uri, volume, str(3 * GIB)))
    assert "jobId" not in same and same["volume"] == grown["volume"]
    assert s.volumes() == {"disk1": ("POOL_ID_00003", 3 * GIB)}
    assert ok(s.proxy.deleteArrayVolume(s.uri, volume, {"requestId": "d1"}))["jobId"]
    assert s.volumes() == {}
    assert ok(s.proxy.deleteArrayVolume(s.uri, volume, {"requestId": "d1"}))  # the repeat: the same answer
    gone = s.proxy.deleteArrayVolume(s.uri, volume)
    assert code(gone) == 5022 and volume in gone["status"]["message"]


def test_array_errors_keep_lsm_message_and_change_nothing(sim):
    """The fake simulator's refusals: NOT_ENOUGH_SPACE (a pool too small), NO_SUPPORT (Pool 1 grows no
    volume), NOT_FOUND_* (unknown pool and volume); each a code of its own, the array unchanged."""
    s = sim()
    small = ok(s.provision("small", 1 << 20, pool="POOL_ID_00001"))["volume"]["id"]
    before = s.volumes()
    big = s.provision("big", 1 << 40)
    assert code(big) == 5023 and "NOT_ENOUGH_SPACE(350): Insufficient space in pool" in big["status"]["message"]
    grow = s.proxy.resizeArrayVolume(s.uri, small, str(1 << 21))
    assert code(grow) == 5024
    assert "NO_SUPPORT(153): Requested pool does not allow volume size grow" in grow["status"]["message"]
    assert code(s.provision("x", pool="POOL_ID_99999")) == 5021
    assert code(s.proxy.resizeArrayVolume(s.uri, "VOL_ID_99999", str(GIB))) == 5022
    assert code(s.proxy.deleteArrayVolume(s.uri, "VOL_ID_99999")) == 5022
    assert s.volumes() == before


@pytest.mark.parametrize("pool, name, size, options", [
    ("POOL_ID_00003", "", str(GIB), {}), ("POOL_ID_00003", "  ", str(GIB), {}),
    ("POOL_ID_00003", "a\nb", str(GIB), {}), ("POOL_ID_00003", 7, str(GIB), {}),
    ("POOL_ID_00003", "d", "0", {}), ("POOL_ID_00003", "d", "-1", {}), ("POOL_ID_00003", "d", "1G", {}),
    ("POOL_ID_00003", "d", True, {}), ("", "d", str(GIB), {}), ("POOL_ID_00003", "d", str(GIB), "thin"),
    ("POOL_ID_00003", "d", str(GIB), {"provisioning": "sparse"}),
])
def test_bad_input_answers_1000_and_changes_nothing(sim, pool, name, size, options):
    """Bad arguments to the fake simulator's array are refused before it is asked."""
    s = sim()
    answer = s.proxy.provisionArrayVolume(s.uri, pool, name, size, options)
    assert code(answer) == 1000, answer
    assert s.volumes() == {}
    assert ok(s.proxy.getArrayPools(s.uri))["pools"]["POOL_ID_00003"]["freeBytes"] == str(512 * GIB)


def test_bad_sizes_for_resize_change_nothing(sim):
    """resizeArrayVolume on the fake simulator refuses a size that is none, and an empty volumeId."""
    s = sim()
    volume = ok(s.provision("disk1"))["volume"]["id"]
    for size in ("0", "-5", "x", ""):
        assert code(s.proxy.resizeArrayVolume(s.uri, volume, size)) == 1000, size
    assert code(s.proxy.resizeArrayVolume(s.uri, "", str(GIB))) == 1000
    assert code(s.proxy.deleteArrayVolume(s.uri, "")) == 1000
    assert s.volumes() == {"disk1": ("POOL_ID_00003", GIB)}


def test_unknown_and_unreachable_arrays(make_hsmd, tmp_path):
    """Beside the fake simulator's array, one whose plugin does not exist: unknown ids answer 5017,
    the unreachable array 5018 with lsm's words, and getArrayList shows its lastError."""
    uri = f"sim://?statefile={tmp_path}/sim.json"
    daemon = make_hsmd(config={"offload": {"arrays": f"{uri}, nosuch://array.example"}},
                       env={"PYTHONPATH": FAKE_LSM}).start()
    proxy = daemon.proxy()
    for verb in VERBS:
        answer = getattr(proxy, verb)(*arguments(verb, "sim://"))
        assert code(answer) == 5017 and "'sim://'" in answer["status"]["message"], (verb, answer)
    assert code(proxy.provisionArrayVolume("sim://", "", "", "0")) == 5017  # the array first, then the arguments
    unreachable = proxy.getArrayCapabilities("nosuch://array.example")
    assert code(unreachable) == 5018
    assert "PLUGIN_NOT_EXIST(311): Plug-in /var/run/lsm/ipc/nosuch not found!" in unreachable["status"]["message"]
    listed = wait_for(lambda: ok(proxy.getArrayList())["arrays"]["nosuch://array.example"]["lastError"],
                      what="the unreachable array's lastError")
    assert listed["code"] == 5018
    assert ok(proxy.getArrayList())["arrays"][uri]["lastError"] == {}


def test_a_missing_capability_is_refused_until_refreshed_back(sim, tmp_path):
    """The fake simulator loses VOLUME_CREATE and VOLUME_THIN: hsmd refuses (5024) once it has read
    the capabilities again, and creates nothing; refreshArrayCapabilities reads them on demand."""
    s = sim()
    first = wait_for(lambda: ok(s.proxy.getArrayList())["arrays"][s.uri]["capabilitiesReadAt"], what="first read")
    fake_sim.set_capabilities_off(f"{tmp_path}/sim.json", [lsm.Capabilities.VOLUME_CREATE,
                                                           lsm.Capabilities.VOLUME_THIN])
    refreshed = ok(s.proxy.refreshArrayCapabilities(s.uri))
    assert float(refreshed["readAt"]) > float(first)
    assert refreshed["capabilities"] == {**refreshed["capabilities"], "VOLUME_CREATE": False, "VOLUME_THIN": False,
                                         "VOLUME_RESIZE": True}
    refused = s.provision("disk1")
    assert code(refused) == 5024 and "lacks VOLUME_CREATE" in refused["status"]["message"]
    assert s.volumes() == {}
    fake_sim.set_capabilities_off(f"{tmp_path}/sim.json", [lsm.Capabilities.VOLUME_THIN])
    ok(s.proxy.refreshArrayCapabilities(s.uri))
    assert code(s.provision("thin", provisioning="thin")) == 5024
    ok(s.provision("full", provisioning="full"))
    assert s.volumes() == {"full": ("POOL_ID_00003", GIB)}


def test_capabilities_are_refreshed_periodically(sim, tmp_path):
    """With capabilities_refresh = 0.2 s, hsmd reads the fake simulator's capabilities again by itself:
    the read time moves on, and a capability taken away shows without refreshArrayCapabilities."""
    s = sim(capabilities_refresh="0.2")
    first = wait_for(s.read_at, what="first read")
    wait_for(lambda: s.read_at() > first, what="a newer read")
    fake_sim.set_capabilities_off(f"{tmp_path}/sim.json", [lsm.Capabilities.VOLUME_RESIZE])
    wait_for(lambda: ok(s.proxy.getArrayCapabilities(s.uri))["capabilities"]["VOLUME_RESIZE"] is False,
             what="VOLUME_RESIZE read as gone")


def test_a_job_past_array_job_timeout_answers_5005(sim):
    """A fake simulator job of 60 s against array_job_timeout = 0.3 s: the verb answers 5005 naming the
    job, which goes on on the array (the simulator made the volume at once, as lsm's sim does)."""
    s = sim(sim_time="60", array_job_timeout="0.3")
    answer = s.provision("slow")
    assert code(answer) == 5005
    assert re.search(r"job JOB_ID_\d+ \(create 'slow'\) still at \d+% after 0.3 s", answer["status"]["message"])
    assert s.volumes() == {"slow": ("POOL_ID_00003", GIB)}


def test_offload_options_in_hsm_conf(tmp_path, sim):
    """[offload] arrays takes libstoragemgmt URIs (the fake simulator's here) without a password, which
    goes in array_password and is never shown; getHsmConfig shows the rest."""
    for bad in ("targetd+ssl://admin:secret@host", "no-scheme", "sim://, sim://"):
        with pytest.raises(ConfigError, match=r"\[offload\] arrays"):
            hsmconfig.load(None, {("offload", "arrays"): bad})
    with pytest.raises(ConfigError, match=r"\[offload\] capabilities_refresh"):
        hsmconfig.load(None, {("offload", "capabilities_refresh"): "0"})
    s = sim(array_password="secret-word")
    shown = ok(s.proxy.getHsmConfig("offload"))["config"]["offload"]
    assert shown == {"enabled": True, "arrays": [s.uri], "capabilities_refresh": 3600.0, "array_job_timeout": 300.0}
    assert "secret-word" not in str(ok(s.proxy.getHsmConfig()))


# -- hsm.arrays.Arrays in this process, on the fake simulator: file clones, has(), on_read() ------------


@dataclass
class Local:
    """An Arrays on one fake sim:// array with one file system, whose export is the folder `root`."""

    arrays: Arrays
    uri: str
    statefile: str
    fs_id: str
    root: pathlib.Path

    def clones(self) -> list[dict]:
        """The file clones the simulated array was asked for, as its state file keeps them."""
        with fake_sim.SimArray(self.statefile).state() as data:
            return list(data["file_clones"])

    def files(self) -> list[str]:
        return sorted(str(path.relative_to(self.root)) for path in self.root.rglob("*"))


@pytest.fixture
def local(tmp_path, monkeypatch):
    """Arrays on a fresh fake simulator with jobs of 0.3 s; its file system's export holds disk.raw
    (64 MiB, 2 MiB of data, the rest a hole) and an empty folder, images."""
    monkeypatch.setenv("LSM_SIM_TIME", "0.3")
    statefile, root = f"{tmp_path}/sim.json", tmp_path / "export"
    (root / "images").mkdir(parents=True)
    with open(root / "disk.raw", "wb") as f:
        f.write(os.urandom(MIB))
        f.seek(63 * MIB)
        f.write(os.urandom(MIB))
    uri = f"sim://?statefile={statefile}"
    arrays = Arrays([uri], job_timeout=30)
    yield Local(arrays, uri, statefile, fake_sim.add_filesystem(statefile, "export", str(root)), root)
    arrays.close()


@pytest.mark.parametrize("sim_time, job_pattern", [("0.3", r"JOB_ID_\d+"), ("0", None)])
def test_file_clone_copies_sparse_and_waits_for_the_job(local, monkeypatch, caplog, sim_time, job_pattern):
    """The fake simulator copies the file inside its export at once, bytes equal and holes kept; with
    jobs, file_clone waits for the job to complete, frees it and answers its id; without, None."""
    monkeypatch.setenv("LSM_SIM_TIME", sim_time)
    caplog.set_level(logging.INFO, "hsm.arrays")
    job = local.arrays.file_clone(local.uri, local.fs_id, "disk.raw", "images/copy.raw")
    copy = local.root / "images" / "copy.raw"
    assert filecmp.cmp(local.root / "disk.raw", copy, shallow=False)
    assert copy.stat().st_size == 64 * MIB and copy.stat().st_blocks * 512 <= 8 * MIB
    assert local.clones() == [{"fs_id": local.fs_id, "src": "disk.raw", "dst": "images/copy.raw"}]
    if job_pattern is None:
        assert job is None
        return
    assert re.fullmatch(job_pattern, job)
    assert f"job {job} (clone 'disk.raw' to 'images/copy.raw' in {local.fs_id}) complete" in caplog.text
    with pytest.raises(lsm.LsmError) as raised:
        lsm.Client(local.uri).job_status(job)
    assert raised.value.code == lsm.ErrorNumber.NOT_FOUND_JOB  # freed


def test_without_file_clone_the_array_is_not_asked(local):
    """The fake simulator without FILE_CLONE: file_clone answers 5024 from the capabilities it reads
    and asks for no clone; has() tells FILE_CLONE's absence, then its return after a refresh."""
    assert not local.arrays.has(local.uri, "FS")  # never read
    fake_sim.set_capabilities_off(local.statefile, [lsm.Capabilities.FILE_CLONE])
    with pytest.raises(ArrayNoSupport, match="lacks FILE_CLONE") as raised:
        local.arrays.file_clone(local.uri, local.fs_id, "disk.raw", "images/copy.raw")
    assert raised.value.code == 5024
    assert local.clones() == [] and local.files() == ["disk.raw", "images"]
    assert (local.arrays.has(local.uri, "FS"), local.arrays.has(local.uri, "FILE_CLONE")) == (True, False)
    fake_sim.set_capabilities_off(local.statefile, [])
    local.arrays.refresh(local.uri)
    assert local.arrays.has(local.uri, "FILE_CLONE")
    assert not local.arrays.has("sim://?statefile=elsewhere", "FILE_CLONE")
    assert not local.arrays.has(local.uri, "NO_SUCH_CAPABILITY")


def test_an_unknown_file_system_answers_5025(local):
    """An fs id the fake simulator does not have: 5025 from filesystem() and file_clone(), no clone."""
    assert local.arrays.filesystem(local.uri, local.fs_id)["name"] == "export"
    with pytest.raises(ArrayFsDoesNotExist) as raised:
        local.arrays.filesystem(local.uri, "FS_ID_99999")
    assert raised.value.code == 5025
    with pytest.raises(ArrayFsDoesNotExist, match="'FS_ID_99999'"):
        local.arrays.file_clone(local.uri, "FS_ID_99999", "disk.raw", "images/copy.raw")
    assert local.clones() == []


@pytest.mark.parametrize("src, dst", [
    ("../export/disk.raw", "copy.raw"), ("disk.raw", "images/../../copy.raw"), ("/etc/hostname", "copy.raw"),
    ("", "copy.raw"), ("disk.raw", ""), ("images", "copy.raw"), ("missing.raw", "copy.raw"),
    ("disk.raw", "missing/copy.raw"), ("disk.raw", "disk.raw"),
])
def test_file_clone_refusals_answer_5019(local, src, dst):
    """What the fake simulator refuses as an array would (INVALID_ARGUMENT: a name not under the file
    system's root, a source that is no regular file, a destination that exists or has no folder)
    answers 5019 with lsm's words, and nothing is copied."""
    with pytest.raises(ArrayRequestFailed, match=r"lsm INVALID_ARGUMENT\(101\)") as raised:
        local.arrays.file_clone(local.uri, local.fs_id, src, dst)
    assert raised.value.code == 5019
    assert local.clones() == [] and local.files() == ["disk.raw", "images"]


def test_on_read_callbacks_hear_every_read(local, caplog):
    """on_read callbacks hear of each read (refreshArrayCapabilities', then the background ones) with
    what was read, outside the array's read lock; one that raises is logged and the reads go on."""
    arrays, heard = Arrays([local.uri], refresh_interval=0.1), []

    def failing(*_: object) -> None:
        raise RuntimeError("a callback's own bug")

    def record(array_id: str, capabilities: dict, read_at: float) -> None:
        heard.append((array_id, capabilities, read_at, arrays._arrays[array_id].reading.locked()))

    arrays.on_read(failing)
    arrays.on_read(record)
    fake_sim.set_capabilities_off(local.statefile, [lsm.Capabilities.FILE_CLONE])
    refreshed = arrays.refresh(local.uri)
    assert [(a, c, f"{r:.3f}", locked) for a, c, r, locked in heard] == [
        (local.uri, refreshed["capabilities"], refreshed["readAt"], False)]
    assert heard[0][1]["FILE_CLONE"] is False and heard[0][1]["FS"] is True
    assert "RuntimeError: a callback's own bug" in caplog.text
    arrays.start()
    try:
        wait_for(lambda: len(heard) >= 3, timeout=10, what="two reads in the background")
    finally:
        arrays.close()
    assert all(entry[3] is False and entry[1] == heard[0][1] for entry in heard)
    assert [entry[2] for entry in heard] == sorted(entry[2] for entry in heard)
