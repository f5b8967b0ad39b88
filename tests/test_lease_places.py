"""Where a block repository's volume leases are (hsm.leases.volume.SlotLeases): the MiB of its leases LV after
the metadata-writer lease's, one per record slot, as many as the LV holds."""

from __future__ import annotations

import uuid

import pytest

from hsm.errors import AcquireLockFailure
from hsm.leases.lockspace import LEASE_OFFSET, Lockspace, Paths
from hsm.leases.volume import SlotLeases

MiB = 1 << 20


def test_each_slot_has_its_mib_and_a_slot_past_the_lv_has_no_lease():
    slots = {str(uuid.uuid4()): number for number in (1, 2, 3)}
    first, second, third = slots
    space = Lockspace(str(uuid.uuid4()), Paths("/dev/ids", "/dev/leases"), host_id=1)
    leases = SlotLeases(space, io=None, device="/dev/leases", size=4 * MiB, slot_of=slots.get)  # type: ignore[arg-type]
    assert leases.place(first) == ("/dev/leases", 2 * MiB) and 2 * MiB > LEASE_OFFSET  # after the writer lease
    assert leases.wire(second) == {"path": "/dev/leases", "offset": str(3 * MiB)}
    assert leases.place(third) is None and leases.wire(third) == {}  # its MiB would end past the LV
    assert leases.holders(third) == []
    with pytest.raises(AcquireLockFailure, match="no volume lease"):
        leases.acquire(third)
    assert leases.place(str(uuid.uuid4())) is None  # no record: no slot
