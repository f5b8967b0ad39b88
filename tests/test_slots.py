"""The slots of a block repository's metadata LV (hsm.storage.slots), on a file through a real IOProcess.

A plain file on this machine's disk takes the same O_DIRECT | O_DSYNC reads and writes as the metadata
LV's device; torn writes and damage are made by writing bytes into it, as a crash or a bad disk would.
"""

from __future__ import annotations

import uuid

import pytest

from hsm.storage.ioprocess import IOProcess
from hsm.storage.slots import COPY, SLOT, RecordTooLarge, SlotsFull, SlotStore

REPO = str(uuid.uuid4())


@pytest.fixture
def io():
    process = IOProcess("slots-test", timeout=30)
    yield process
    process.close()


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "metadata"
    with open(path, "wb") as f:
        f.truncate(64 * SLOT)
    return str(path)


def store(io, device, repo=REPO, slots=64):
    found = SlotStore(io, device, repo, slots * SLOT)
    return found


def scribble(device, offset, data):
    with open(device, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_records_come_back_after_a_reload_and_freed_slots_are_used_again(io, device):
    first = store(io, device)
    first.write_repository(b'{"uuid": "r"}')
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for number, image_id in enumerate(ids):
        first.write(image_id, f'{{"n": {number}}}'.encode())
    first.write(ids[1], b'{"n": "changed"}')
    first.free(ids[2])
    again = store(io, device)
    found, damaged = again.load()
    assert damaged == {}
    assert found == {ids[0]: b'{"n": 0}', ids[1]: b'{"n": "changed"}', ids[3]: b'{"n": 3}', ids[4]: b'{"n": 4}'}
    assert again.repository() == b'{"uuid": "r"}'
    new = str(uuid.uuid4())
    again.write(new, b"{}")
    assert again.read(new) == b"{}"
    # it took the freed slot (3: slot 0 is the repository's), not a new one past the end
    with open(device, "rb") as f:
        f.seek(3 * SLOT)
        assert new.encode() in f.read(SLOT)


def test_a_torn_write_leaves_the_version_before(io, device):
    """A crash in the middle of a write damages only the copy being written: the other copy holds the last
    version acknowledged before it."""
    slots = store(io, device)
    image_id = str(uuid.uuid4())
    slots.write(image_id, b'{"v": 1}')   # copy A of slot 1
    slots.write(image_id, b'{"v": 2}')   # copy B
    slots.write(image_id, b'{"v": 3}')   # copy A again: the newest
    scribble(device, SLOT + 40, b"\xff" * 100)  # copy A torn (as if the crash came while writing v3)
    found, damaged = store(io, device).load()
    assert found == {image_id: b'{"v": 2}'} and damaged == {}


def test_both_copies_damaged_is_reported_and_the_slot_never_reused(io, device):
    slots = store(io, device)
    image_id = str(uuid.uuid4())
    slots.write(image_id, b'{"v": 1}')
    slots.write(image_id, b'{"v": 2}')
    scribble(device, SLOT + 40, b"\xff" * 8)
    scribble(device, SLOT + COPY + 40, b"\xff" * 8)
    again = store(io, device)
    found, damaged = again.load()
    assert found == {} and list(damaged) == [1] and "checksum" in damaged[1]
    other = str(uuid.uuid4())
    again.write(other, b"{}")
    assert store(io, device).load() == ({other: b"{}"}, damaged)  # written past the damaged slot


def test_slots_of_an_earlier_repository_are_not_ours(io, device):
    """A LUN that held another repository: its slots read as never written, and are overwritten."""
    earlier = store(io, device, repo=str(uuid.uuid4()))
    earlier.write(str(uuid.uuid4()), b'{"old": true}')
    ours = store(io, device)
    assert ours.load() == ({}, {})
    mine = str(uuid.uuid4())
    ours.write(mine, b'{"new": true}')
    assert store(io, device).load() == ({mine: b'{"new": true}'}, {})


def test_limits(io, device):
    slots = store(io, device, slots=3)
    with pytest.raises(RecordTooLarge):
        slots.write(str(uuid.uuid4()), b"x" * COPY)
    slots.write(str(uuid.uuid4()), b"{}")
    slots.write(str(uuid.uuid4()), b"{}")
    with pytest.raises(SlotsFull):
        slots.write(str(uuid.uuid4()), b"{}")
    assert slots.in_use() == 2


def test_two_hosts_take_turns_and_each_learns_where_the_others_records_are(io, device):
    """Two stores over one device stand for two hosts taking turns under the metadata-writer lease: each
    reads again the slots the other wrote (the generation record names them), and then allocates no slot
    the other uses, reads the other's records, and reuses a slot the other freed."""
    host1, host2 = store(io, device), store(io, device)
    host1.load()
    host2.load()
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    written = [host1.write(a, b'{"by": 1}'), host1.write(b, b'{"by": 1}')]
    host2.reread(written)
    assert host2.read(a) == b'{"by": 1}'
    slot_c = host2.write(c, b'{"by": 2}')
    assert slot_c not in written  # the slot after host 1's, not one of them
    freed = host2.free(a)
    host1.reread([slot_c, freed])
    assert host1.read(a) is None and host1.read(c) == b'{"by": 2}'
    d = str(uuid.uuid4())
    assert host1.write(d, b"{}") == freed  # the slot host 2 freed is used again
    found, damaged = store(io, device).load()
    assert damaged == {} and found == {b: b'{"by": 1}', c: b'{"by": 2}', d: b"{}"}
