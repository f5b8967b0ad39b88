"""appropriateDevice and inappropriateDevices: a VM's direct LUN given to VDSM's VM user by a udev rule.

A real supervdsmd writes the rules into a temporary folder (`[supervdsm] udev_rules_dir`) and runs the
real udevadm. These machines have no device-mapper (and no udevd), so /dev/mapper/<guid> never appears
and no rule is ever applied: what is asserted is the rules file (name, content, mode), its removal,
that udevadm's trigger and settle ran without error (an error would answer 5004), and, through a
udevadm that records its arguments, exactly what udev was asked.
"""

import os
import pathlib
import stat

import pytest

from hsm.errors import HsmError
from supervdsm import udev
from tests.images_helpers import code, ok
from tests.legacy_helpers import BLANK, run_both, sides_with
from tests.supervdsmd import Supervdsmd

WWID = "360014051f7ba3b5e8f24a8ea2f5c3b5d"
ALIAS = "mpath_lun-1.a"
VM1 = "77777777-7777-4777-8777-777777777777"
VM2 = "88888888-8888-4888-8888-888888888888"
FOREIGN = "60-someone-else.rules"  # another package's rule: never touched


def rule(guid: str) -> str:
    return f'SYMLINK=="mapper/{guid}", RUN+="/usr/bin/chown vdsm:qemu $env{{DEVNAME}}"\n'


def rules_in(folder: str) -> dict:
    return {path.name: path.read_text() for path in sorted(pathlib.Path(folder).iterdir())}


@pytest.fixture
def rules_dir(tmp_path):
    folder = tmp_path / "rules.d"
    folder.mkdir()
    (folder / FOREIGN).write_text('KERNEL=="sda", GROUP="disk"\n')
    (folder / f"99-vdsm-{WWID}-{VM1}.rules.bak").write_text("not a rule of VM1\n")
    return str(folder)


def start_supervdsmd(tmp_path, rules_dir, env=None):
    return Supervdsmd(str(tmp_path / "sv"), env=env, udev_rules_dir=rules_dir).start()


BAD_APPROPRIATE = [
    ("", VM1), ("a b", VM1), ('x"y', VM1), ("mpath*", VM1), ("mpath?", VM1), ("mpath[ab]", VM1),
    ("mpatha|mpathb", VM1), ("../etc/passwd", VM1), ("..", VM1), ("-x", VM1), ("x/y", VM1), ("x\n", VM1),
    ("\u0663600", VM1), ("x" * 128, VM1), (5, VM1), (WWID, ""), (WWID, "not-a-uuid"), (WWID, VM1 + "x"),
    (WWID, VM1 + "\n"), (WWID, "../" + VM1), (WWID, 7),
]
BAD_INAPPROPRIATE = ["", "*", ".*", "../" + VM1, VM1 + "/x", VM1[:-1] + "?", 5]


def flow(rules_dir: str):
    """The same calls through hsmd and in-process; the rules folder is left as it was found."""
    def run(irs, root: str) -> list:
        before = rules_in(rules_dir)
        for args in BAD_APPROPRIATE + [(WWID, BLANK)]:
            assert code(irs.appropriateDevice(*args)) == 1000, args
        for thief in BAD_INAPPROPRIATE + [BLANK]:
            assert code(irs.inappropriateDevices(thief)) == 1000, thief
        assert rules_in(rules_dir) == before  # nothing written, nothing removed

        seen = [ok(irs.appropriateDevice(WWID, VM1)), ok(irs.appropriateDevice(ALIAS, VM1)),
                ok(irs.appropriateDevice(WWID, VM2)), ok(irs.appropriateDevice(WWID, VM2))]  # again: the same
        assert rules_in(rules_dir) == {**before, f"99-vdsm-{ALIAS}-{VM1}.rules": rule(ALIAS),
                                       f"99-vdsm-{WWID}-{VM1}.rules": rule(WWID),
                                       f"99-vdsm-{WWID}-{VM2}.rules": rule(WWID)}
        assert stat.S_IMODE(os.stat(os.path.join(rules_dir, f"99-vdsm-{WWID}-{VM1}.rules")).st_mode) == 0o644

        seen.append(ok(irs.inappropriateDevices(VM1)))  # both of VM1's, none of VM2's
        assert rules_in(rules_dir) == {**before, f"99-vdsm-{WWID}-{VM2}.rules": rule(WWID)}
        seen += [ok(irs.inappropriateDevices(VM1)), ok(irs.inappropriateDevices(VM2))]
        assert rules_in(rules_dir) == before
        return seen
    return run


@pytest.fixture
def both_with_rules(make_hsmd, tmp_path, rules_dir):
    """[(irs, root)]: hsmd through ServiceProxy, then hsm in-process, both asking one supervdsmd with rules_dir."""
    supervdsmd = start_supervdsmd(tmp_path, rules_dir)
    with sides_with(make_hsmd, tmp_path, supervdsmd) as sides:
        yield sides
    supervdsmd.kill()


def test_rules_written_and_removed_through_hsmd_and_in_process(both_with_rules, rules_dir):
    run_both(both_with_rules, flow(rules_dir))


def test_supervdsmd_takes_no_owner_nor_path_from_the_caller(tmp_path, rules_dir):
    supervdsmd = start_supervdsmd(tmp_path, rules_dir)
    client = supervdsmd.client()
    before = rules_in(rules_dir)
    try:
        for args in [{"guid": WWID, "thiefId": VM1, "owner": "root"}, {"guid": WWID, "thiefId": VM1, "group": "disk"},
                     {"guid": WWID, "thiefId": VM1, "path": "/etc/udev/rules.d"}, {"guid": WWID},
                     {"guid": [WWID], "thiefId": VM1}, *({"guid": g, "thiefId": t} for g, t in BAD_APPROPRIATE
                                                        if isinstance(g, str) and isinstance(t, str))]:
            with pytest.raises(HsmError) as refused:
                client.call("appropriateDevice", **args)
            assert refused.value.code == 1000, args
        for thief in BAD_INAPPROPRIATE[:-1]:
            with pytest.raises(HsmError) as refused:
                client.call("inappropriateDevices", thiefId=thief)
            assert refused.value.code == 1000, thief
        assert rules_in(rules_dir) == before
        assert client.call("appropriateDevice", guid=WWID, thiefId=VM1) == {"rule": f"99-vdsm-{WWID}-{VM1}.rules"}
        assert client.call("inappropriateDevices", thiefId=VM1) == {"removed": [WWID]}
        assert client.call("inappropriateDevices", thiefId=VM1) == {"removed": []}
        assert rules_in(rules_dir) == before
    finally:
        client.close()
        supervdsmd.kill()


@pytest.fixture
def recording_udevadm(tmp_path):
    """(bin folder, record file, failure flag): a udevadm on PATH that appends its arguments to the record,
    and fails (rc 3) while the flag file exists."""
    folder = tmp_path / "bin"
    folder.mkdir()
    record, flag = tmp_path / "udevadm.calls", tmp_path / "udevadm.fail"
    script = folder / "udevadm"
    script.write_text(f'#!/bin/sh\necho "$*" >> {record}\n[ -e {flag} ] && {{ echo broken >&2; exit 3; }}\nexit 0\n')
    script.chmod(0o755)
    return str(folder), record, flag


def test_udev_is_asked_for_those_devices_and_waited_for(tmp_path, rules_dir, recording_udevadm):
    """The trigger names the device-mapper devices (change events on block devices), then udev is settled;
    a failing udevadm is a failed call (5004) naming it. udevd's rule reload is left out: it is not running."""
    folder, record, flag = recording_udevadm
    assert not os.path.exists(udev.UDEV_CONTROL), "udevd runs here: the record would start with control --reload"
    supervdsmd = start_supervdsmd(tmp_path, rules_dir, env={"PATH": f"{folder}:{os.environ['PATH']}"})
    client = supervdsmd.client()
    try:
        client.call("appropriateDevice", guid=WWID, thiefId=VM1)
        client.call("appropriateDevice", guid=ALIAS, thiefId=VM1)
        client.call("inappropriateDevices", thiefId=VM1)
        settle = f"settle --timeout={udev.SETTLE_TIMEOUT}"
        trigger = "trigger --action=change --subsystem-match=block"
        assert record.read_text().splitlines() == [
            f"{trigger} --property-match=DM_NAME={WWID}", settle,
            f"{trigger} --property-match=DM_NAME={ALIAS}", settle,
            f"{trigger} --property-match=DM_NAME={WWID} --property-match=DM_NAME={ALIAS}", settle]

        flag.touch()
        with pytest.raises(HsmError) as failed:
            client.call("appropriateDevice", guid=WWID, thiefId=VM2)
        assert failed.value.code == 5004 and "udevadm trigger failed (rc 3): broken" in str(failed.value)
        flag.unlink()  # the rule stays, as VDSM's did, until the VM's inappropriateDevices
        assert client.call("inappropriateDevices", thiefId=VM2) == {"removed": [WWID]}
    finally:
        client.close()
        supervdsmd.kill()
