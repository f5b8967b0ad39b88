"""hsmd's LVM layer (hsm.storage.lvm) on real LVM over loop devices, through a real supervdsmd.

LVM runs with activation off (no device-mapper on these machines): supervdsmd
gets LVM_SYSTEM_DIR pointing at a private lvm.conf, as shared/environment.md
says. The few tests at the end drive the same code with a scripted supervdsmd
client, for what real LVM cannot be made to do on demand.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading

import pytest

from hsm import errors
from hsm.sampling import SamplingMethod
from hsm.storage.lvm import LVM, MiB, lvm_config
from tests.lvm_helpers import pv_labels, real_lvm, report
from tests.waiting import wait_for

EXTENT = 128 * MiB
_names = itertools.count()


@pytest.fixture
def helper(lvm_supervdsmd):
    client = lvm_supervdsmd.client()
    yield client
    client.close()


def vg_name() -> str:
    return f"hsmlvm{os.getpid()}x{next(_names)}"


@pytest.fixture
def vg(helper, loops):
    """A VG made by hsm on one loop device."""
    lvm = LVM(helper, vg_name(), [loops()])
    lvm.create_vg(tags=["RHAT_storage_domain"])
    return lvm


# The volume group.

@real_lvm
def test_vg_is_made_with_tags_and_vdsm_metadata_layout(helper, loops, lvm_dir):
    first, second = loops(), loops()
    lvm = LVM(helper, vg_name(), [first, second])
    made = lvm.create_vg(tags=["RHAT_storage_domain_UNREADY", "MDT_CLASS=Data"])
    assert made.name == lvm.vg_name and made.pv_count == 2 and made.lv_count == 0
    assert set(made.tags) == {"RHAT_storage_domain_UNREADY", "MDT_CLASS=Data"}
    assert made.extent_size == EXTENT and made.mda_size == 128 * MiB
    pvs = {pv.name: pv for pv in lvm.pvs()}
    assert (pvs[first].mda_count, pvs[first].mda_used_count) == (2, 2), "the first PV keeps the metadata"
    assert (pvs[second].mda_count, pvs[second].mda_used_count) == (2, 0), "the others hold ignored copies"
    seen = report(lvm_dir, [first, second], "vgs", "vg", "-o", "vg_name,vg_tags,vg_autoactivation", lvm.vg_name)
    assert seen == [{"vg_name": lvm.vg_name, "vg_tags": "MDT_CLASS=Data,RHAT_storage_domain_UNREADY",
                     "vg_autoactivation": ""}], "auto-activation is off, as VDSM sets it"
    lvm.change_vg_tags(add=["RHAT_storage_domain"], remove=["RHAT_storage_domain_UNREADY"])
    assert set(lvm.vg().tags) == {"RHAT_storage_domain", "MDT_CLASS=Data"}


@real_lvm
def test_extend_vg_adds_a_device_to_the_vg_and_the_filter(vg, loops, lvm_dir):
    added = loops()
    before = vg.vg()
    after = vg.extend_vg([added])
    assert after.pv_count == 2 and after.extent_count > before.extent_count
    assert added in vg.devices and added in {pv.name for pv in vg.pvs()}
    assert pv_labels(lvm_dir, vg.devices) == dict.fromkeys(vg.devices, vg.vg_name)
    assert pv_labels(lvm_dir, [added]) == {added: "[unknown]"}, "alone it shows no VG: its metadata is ignored"


@real_lvm
def test_remove_vg_leaves_the_devices_clean(vg, lvm_dir):
    vg.create_lv("lv1", MiB)
    vg.remove_vg()
    assert pv_labels(lvm_dir, vg.devices) == {}
    with pytest.raises(errors.VolumeGroupDoesNotExist):
        vg.vg()


# Logical volumes.

@real_lvm
def test_lvs_are_sized_in_whole_extents_with_their_tags(vg):
    vg.create_lv("vol1", 100 * MiB, tags=["IU_image1", "PU_00000000-0000-0000-0000-000000000000", "MD_1"])
    vg.create_lv("vol2", EXTENT + 1)
    volumes = vg.volumes()
    assert set(volumes) == {"vol1", "vol2"}
    assert volumes["vol1"].size == EXTENT and volumes["vol2"].size == 2 * EXTENT
    assert set(volumes["vol1"].tags) == {"IU_image1", "PU_00000000-0000-0000-0000-000000000000", "MD_1"}
    assert volumes["vol1"].pv == vg.devices[0] and volumes["vol1"].writeable

    vg.extend_lv("vol1", 300 * MiB)
    assert vg.volume("vol1").size == 3 * EXTENT
    calls = vg.calls()
    vg.extend_lv("vol1", 2 * EXTENT)
    assert vg.calls() == calls, "already big enough: no lvm command"

    vg.change_lv_tags("vol1", add=["MD_2"], remove=["MD_1"])
    vg.rename_lv("vol2", "vol3")
    volumes = vg.volumes()
    assert set(volumes) == {"vol1", "vol3"}
    assert set(volumes["vol1"].tags) == {"IU_image1", "PU_00000000-0000-0000-0000-000000000000", "MD_2"}
    vg.remove_lvs("vol1", "vol3")
    assert vg.volumes() == {}


@real_lvm
def test_extent_map_says_where_each_segment_lies_on_the_pv(vg):
    vg.create_lv("a", EXTENT)
    vg.create_lv("b", EXTENT)
    vg.extend_lv("a", 2 * EXTENT)  # its second extent comes after b's
    pe_start = vg.pvs()[0].pe_start
    device = vg.devices[0]
    assert vg.extent_map("b") == [(device, pe_start + EXTENT, EXTENT)]
    assert vg.extent_map("a") == [(device, pe_start, EXTENT), (device, pe_start + 2 * EXTENT, EXTENT)]
    segments = vg.volume("a").segments
    assert [(seg.lv_start, seg.extents, seg.pv_start) for seg in segments] == [(0, 1, 0), (1, 1, 2)]


# The filter.

@real_lvm
def test_the_filter_hides_a_vg_on_another_device(helper, loops, lvm_dir):
    ours, theirs = LVM(helper, vg_name(), [loops()]), LVM(helper, vg_name(), [loops()])
    ours.create_vg()
    theirs.create_vg()
    theirs.create_lv("secret", MiB)
    assert [pv.name for pv in ours.pvs()] == list(ours.devices)
    peeking = LVM(helper, theirs.vg_name, ours.devices)
    with pytest.raises(errors.VolumeGroupDoesNotExist):
        peeking.volumes()
    assert "secret" in theirs.volumes(), "the VG is there, seen through its own device"
    both = [*ours.devices, *theirs.devices]
    assert {vg["vg_name"] for vg in report(lvm_dir, both, "vgs", "vg", "-o", "vg_name")} == {ours.vg_name,
                                                                                           theirs.vg_name}


def test_the_config_string_accepts_exactly_the_devices():
    config = lvm_config(["/dev/mapper/3600a0b80001+x.y", "/dev/loop1"])
    assert 'filter=["a|^/dev/loop1$|^/dev/mapper/3600a0b80001[+]x[.]y$|", "r|.*|"]' in config
    assert "global { prioritise_write_locks=1 wait_for_locks=1 use_lvmpolld=1 }" in config
    assert "backup { retain_min=50 retain_days=0 }" in config
    assert 'filter=["r|.*|"]' in lvm_config([])


# Errors: LVM's failures as VDSM's numbers, nothing half-made.

@real_lvm
def test_unknown_vg_and_lv_are_506_and_610(helper, vg):
    unknown = LVM(helper, "nosuchvg", vg.devices)
    for call in (unknown.vg, unknown.volumes, lambda: unknown.create_lv("x", MiB)):
        with pytest.raises(errors.VolumeGroupDoesNotExist) as info:
            call()
        assert info.value.code == 506
    for call in (lambda: vg.volume("nolv"), lambda: vg.extend_lv("nolv", MiB), lambda: vg.remove_lvs("nolv"),
                 lambda: vg.rename_lv("nolv", "other"), lambda: vg.change_lv_tags("nolv", add=["x"])):
        with pytest.raises(errors.LogicalVolumeDoesNotExistError) as info:
            call()
        assert info.value.code == 610


@real_lvm
def test_lv_name_taken_and_no_space(vg):
    vg.create_lv("vol1", MiB)
    with pytest.raises(errors.LogicalVolumeAlreadyExists):
        vg.create_lv("vol1", MiB)
    free = vg.vg().free
    with pytest.raises(errors.VolumeGroupSizeError):
        vg.create_lv("huge", free + 1)
    with pytest.raises(errors.VolumeGroupSizeError):
        vg.extend_lv("vol1", free + 2 * EXTENT)
    assert set(vg.volumes()) == {"vol1"} and vg.volume("vol1").size == EXTENT
    vg.create_lv("vol2", MiB)
    with pytest.raises(errors.LogicalVolumeAlreadyExists):
        vg.rename_lv("vol1", "vol2")
    with pytest.raises(errors.LogicalVolumeRenameError, match="must differ"):
        vg.rename_lv("vol1", "vol1")
    vg.create_lv("rest", vg.vg().free)
    assert vg.vg().free == 0


@real_lvm
def test_contiguous_lvs_and_a_refused_one(vg):
    for name in ("a", "b", "c"):
        vg.create_lv(name, EXTENT, contiguous=True)
    vg.remove_lvs("b")  # free space: one extent between a and c, the rest after c
    after_c = vg.vg().free - EXTENT
    with pytest.raises(errors.CannotCreateLogicalVolume) as info:
        vg.create_lv("d", after_c + EXTENT, contiguous=True)
    assert info.value.code == 550 and "contiguous" in str(info.value)
    vg.create_lv("d", after_c, contiguous=True)
    assert len(vg.volume("d").segments) == 1
    assert set(vg.volumes()) == {"a", "c", "d"}


@real_lvm
def test_a_device_of_another_vg_is_refused_and_nothing_is_written(helper, loops, lvm_dir):
    other = LVM(helper, vg_name(), [loops(), loops()])
    other.create_vg()
    other.create_lv("data", MiB)
    free = loops()
    lvm = LVM(helper, vg_name(), [free, *other.devices])
    with pytest.raises(errors.PhysDevInitializationError) as info:
        lvm.create_vg()
    assert info.value.code == 601 and other.vg_name in str(info.value)
    with pytest.raises(errors.PhysDevInitializationError, match="unknown"):
        LVM(helper, vg_name(), [free, other.devices[1]]).create_vg()  # seen alone, its VG has no name
    assert pv_labels(lvm_dir, [free, *other.devices]) == dict.fromkeys(other.devices, other.vg_name)
    assert "data" in other.volumes()

    mine = LVM(helper, vg_name(), [free])
    mine.create_vg()
    with pytest.raises(errors.PhysDevInitializationError):
        mine.extend_vg(other.devices)
    assert mine.devices == (free,) and mine.vg().pv_count == 1
    with pytest.raises(errors.VolumeGroupAlreadyExistsError) as info:
        LVM(helper, mine.vg_name, [free]).create_vg()
    assert info.value.code == 505


@real_lvm
def test_a_failed_pvcreate_wipes_the_labels_it_wrote(helper, loops, lvm_dir):
    first, formatted = loops(), loops(64)
    subprocess.run(["mkfs.ext4", "-q", formatted], check=True)
    lvm = LVM(helper, vg_name(), [first, formatted])
    with pytest.raises(errors.PhysDevInitializationError) as info:
        lvm.create_vg()
    assert "ext4 signature" in str(info.value)
    assert pv_labels(lvm_dir, [first, formatted]) == {}, "the first device's new label is gone again"


@real_lvm
def test_a_failed_vgcreate_wipes_the_labels_it_wrote(helper, loops, lvm_dir):
    devices = [loops(), loops()]
    lvm = LVM(helper, "shm", devices)  # LVM refuses a VG name that is taken in /dev
    with pytest.raises(errors.VolumeGroupCreateError) as info:
        lvm.create_vg()
    assert info.value.code == 502 and "/dev/shm" in str(info.value)
    assert pv_labels(lvm_dir, devices) == {}


@real_lvm
@pytest.mark.parametrize("call", [
    lambda lvm: lvm.create_lv("bad name", MiB),
    lambda lvm: lvm.create_lv("-n", MiB),
    lambda lvm: lvm.create_lv("lv_tmeta", MiB),
    lambda lvm: lvm.create_lv("snapshot1", MiB),
    lambda lvm: lvm.create_lv("ok", 0),
    lambda lvm: lvm.create_lv("ok", MiB, tags=["-f"]),
    lambda lvm: lvm.create_lv("ok", MiB, tags=["a,b"]),
    lambda lvm: lvm.change_lv_tags("ok", add=["@x"]),
    lambda lvm: lvm.rename_lv("ok", "../x"),
    lambda lvm: lvm.extend_vg(["/dev/../etc/passwd"]),
    lambda lvm: lvm.create_vg(extent_size=3 * MiB),
])
def test_names_tags_and_sizes_are_checked_before_supervdsmd(vg, call):
    calls = vg.calls()
    with pytest.raises(errors.InvalidParameterException):
        call(vg)
    assert vg.calls() == calls


def test_bad_names_never_make_an_object():
    for name, devices in (("-vg", ["/dev/loop0"]), ("vg", ["/dev/loop0;reboot"]), ("vg", ["loop0"])):
        with pytest.raises(errors.InvalidParameterException):
            LVM(None, name, devices)  # type: ignore[arg-type]


# The sampled cache.

@real_lvm
def test_concurrent_refreshes_share_at_most_two_lvs_runs(vg):
    for number in range(5):
        vg.create_lv(f"vol{number}", MiB)
    threads = 8  # as many as the supervdsmd client lets run at once
    barrier = threading.Barrier(threads)
    seen: list[set[str]] = []

    def ask() -> None:
        barrier.wait()
        seen.append(set(vg.refresh()))

    before = vg.calls().get("lvs", 0)
    workers = [threading.Thread(target=ask) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    runs = vg.calls()["lvs"] - before
    assert 1 <= runs <= 2, f"{threads} concurrent refreshes ran lvs {runs} times"
    assert seen == [{f"vol{number}" for number in range(5)}] * threads


@real_lvm
def test_the_cache_serves_reads_until_a_change(vg):
    vg.create_lv("vol1", MiB)
    vg.volumes()
    lvs = vg.calls()["lvs"]
    for _ in range(10):
        assert set(vg.volumes()) == {"vol1"}
        vg.volume("vol1")
    assert vg.calls()["lvs"] == lvs, "served from the cache"
    vg.create_lv("vol2", MiB)
    assert set(vg.volumes()) == {"vol1", "vol2"}, "a change made here invalidates"
    assert vg.calls()["lvs"] == lvs + 1
    vg.invalidate()
    vg.volumes()
    assert vg.calls()["lvs"] == lvs + 2


@real_lvm
def test_a_volume_made_elsewhere_is_found_by_name(vg, helper):
    vg.volumes()
    LVM(helper, vg.vg_name, vg.devices).create_lv("fromelsewhere", MiB)  # another host, say
    assert vg.volume("fromelsewhere").size == EXTENT


class ScriptedSupervdsm:
    """A supervdsmd client whose lvm verb answers what the test says, for failures real LVM will not make."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.commands: list[str] = []

    def call(self, verb, command, args, config):
        assert verb == "lvm"
        self.commands.append(command)
        return self.answer(command, args)


def scripted_vg(failing: str) -> LVM:
    """An LVM over a scripted VG of one 1-extent LV, whose `failing` command fails with words LVM has no number for."""
    rows = {"vgs": ("vg", [{"vg_uuid": "u", "vg_name": "vg1", "vg_size": str(10 * EXTENT), "vg_free": str(9 * EXTENT),
                            "vg_extent_size": str(EXTENT), "vg_extent_count": "10", "vg_free_count": "9",
                            "vg_tags": "", "vg_mda_size": str(128 * MiB), "pv_count": "1", "lv_count": "1"}]),
            "lvs": ("lv", [{"lv_uuid": "u1", "lv_name": "lv1", "lv_size": str(EXTENT), "lv_tags": "",
                            "lv_attr": "-wi-------", "seg_start_pe": "0", "seg_size_pe": "1",
                            "devices": "/dev/loop0(0)"}]),
            "pvs": ("pv", [])}

    def answer(command, args):
        if command == failing:
            return {"rc": 5, "out": "", "err": "  Something else went wrong.\n"}
        if command in rows:
            key, found = rows[command]
            return {"rc": 0, "out": json.dumps({"report": [{key: found}]}), "err": ""}
        return {"rc": 0, "out": "", "err": ""}

    return LVM(ScriptedSupervdsm(answer), "vg1", ["/dev/loop0", "/dev/loop1"])  # type: ignore[arg-type]


@pytest.mark.parametrize("failing, call, error", [
    ("pvcreate", lambda lvm: lvm.create_vg(), errors.PhysDevInitializationError),
    ("vgcreate", lambda lvm: lvm.create_vg(), errors.VolumeGroupCreateError),
    ("vgextend", lambda lvm: lvm.extend_vg(["/dev/loop2"]), errors.VolumeGroupExtendError),
    ("vgchange", lambda lvm: lvm.change_vg_tags(add=["x"]), errors.VolumeGroupReplaceTagError),
    ("vgremove", lambda lvm: lvm.remove_vg(), errors.VolumeGroupRemoveError),
    ("lvcreate", lambda lvm: lvm.create_lv("lv2", MiB), errors.CannotCreateLogicalVolume),
    ("lvextend", lambda lvm: lvm.extend_lv("lv1", 2 * EXTENT), errors.LogicalVolumeExtendError),
    ("lvchange", lambda lvm: lvm.change_lv_tags("lv1", add=["x"]), errors.LogicalVolumeReplaceTagError),
    ("lvrename", lambda lvm: lvm.rename_lv("lv1", "lv2"), errors.LogicalVolumeRenameError),
    ("lvremove", lambda lvm: lvm.remove_lvs("lv1"), errors.LogicalVolumeRemoveError),
    ("lvs", lambda lvm: lvm.volumes(), errors.LVMCommandError),
])
def test_each_command_fails_with_its_vdsm_number(failing, call, error):
    lvm = scripted_vg(failing)
    with pytest.raises(error) as info:
        call(lvm)
    assert type(info.value) is error and "Something else went wrong." in str(info.value)
    assert failing in str(info.value)


def test_a_failed_pvcreate_or_vgcreate_wipes_what_it_labelled():
    for failing in ("pvcreate", "vgcreate"):
        lvm = scripted_vg(failing)
        with pytest.raises(errors.HsmError):
            lvm.create_vg()
        assert lvm._supervdsm.commands[-2:] == ["pvremove", "pvremove"], "each device it labelled"


def test_an_unknown_lvm_failure_is_621_with_lvm_words():
    lvm = LVM(ScriptedSupervdsm(lambda command, args: {  # type: ignore[arg-type]
        "rc": 5, "out": "", "err": "  WARNING: Activation disabled.\n  Metadata on /dev/loop0 is damaged\n"}),
        "vg1", ["/dev/loop0"])
    with pytest.raises(errors.LVMCommandError) as info:
        lvm.volumes()
    assert info.value.code == 621
    assert "Metadata on /dev/loop0 is damaged" in str(info.value) and "Activation disabled" not in str(info.value)


def test_an_unreadable_report_is_621():
    lvm = LVM(ScriptedSupervdsm(lambda command, args: {"rc": 0, "out": "not json", "err": ""}),  # type: ignore[arg-type]
              "vg1", ["/dev/loop0"])
    with pytest.raises(errors.LVMCommandError, match="unreadable report"):
        lvm.vg()


def test_a_change_during_an_lvs_run_is_not_hidden_by_its_result():
    reading, release = threading.Event(), threading.Event()
    rows = [{"lv_uuid": "u1", "lv_name": "old", "lv_size": "1048576", "lv_tags": "", "lv_attr": "-wi-------",
             "seg_start_pe": "0", "seg_size_pe": "1", "devices": "/dev/loop0(0)"}]

    def answer(command, args):
        reading.set()
        assert release.wait(10)
        return {"rc": 0, "out": json.dumps({"report": [{"lv": rows}]}), "err": ""}

    client = ScriptedSupervdsm(answer)
    lvm = LVM(client, "vg1", ["/dev/loop0"])  # type: ignore[arg-type]
    slow = threading.Thread(target=lvm.volumes)
    slow.start()
    assert reading.wait(10)
    lvm.invalidate()  # a udev event, say, while lvs reads
    release.set()
    slow.join(10)
    lvm.volumes()
    assert client.commands == ["lvs", "lvs"], "the result read before the change was not kept"
    lvm.volumes()
    assert client.commands == ["lvs", "lvs"]


def test_sampling_callers_that_come_during_a_run_share_the_next_one():
    runs: list[int] = []
    first_running, release = threading.Event(), threading.Event()

    def sample() -> int:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            first_running.set()
            assert release.wait(10)
        return len(runs)

    sampled = SamplingMethod(sample)
    results: dict[str, int] = {}
    first = threading.Thread(target=lambda: results.update(first=sampled()))
    first.start()
    assert first_running.wait(10)
    later = [threading.Thread(target=lambda n=n: results.update({f"later{n}": sampled()})) for n in range(6)]
    for thread in later:
        thread.start()
    wait_for(lambda: sampled.waiting == 6, 10, what="six callers waiting")
    release.set()
    for thread in (first, *later):
        thread.join(10)
    assert runs == [1, 2]
    assert results == {"first": 1, **{f"later{n}": 2 for n in range(6)}}
    assert sampled() == 3, "a caller that comes when nothing runs gets a run of its own"


def test_sampling_hands_a_failure_to_every_caller_of_that_run():
    failing, release = threading.Event(), threading.Event()

    def sample() -> str:
        failing.set()
        assert release.wait(10)
        raise errors.LVMCommandError("lvs failed")

    sampled = SamplingMethod(sample)
    failures: list[Exception] = []

    def ask() -> None:
        try:
            sampled()
        except errors.LVMCommandError as e:
            failures.append(e)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    threads[0].start()
    assert failing.wait(10)
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: sampled.waiting == 2, 10, what="two callers waiting")
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(failures) == 3
