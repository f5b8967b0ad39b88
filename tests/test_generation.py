"""The generation record of a shared repository (hsm.leases.writer.Generation): what it remembers, and what it
refuses when another host (or damage) wrote it."""

from __future__ import annotations

import json
import uuid

import pytest

from hsm.leases.writer import REMEMBERED, Generation


def ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def test_changes_come_back_with_the_slots_they_wrote():
    a, b, c = ids(3)
    record = Generation(3, 2, False, [(1, a, None), (2, b, 7), (3, c, 8), (3, a, 4)])
    again = Generation.parse(record.to_json())
    assert again.changed_since(1) == ({b, c, a}, {7, 8, 4})
    assert again.changed_since(3) == (set(), set())
    assert again.changed_since(0) == ({a, b, c}, {4, 7, 8})
    assert again.changed_since(4) is None  # a record older than what this host knows: trust nothing


def test_a_generation_cut_by_the_limit_is_forgotten_whole():
    """A generation whose first changes fall before the REMEMBERED last entries must not look remembered with
    only its later changes: a host that knows the generation before it then reads every record."""
    cut, later = ids(10), ids(REMEMBERED - 3)
    record = Generation(2, 1, False, [(1, image_id, n + 1) for n, image_id in enumerate(cut)] +
                        [(2, image_id, None) for image_id in later])
    again = Generation.parse(record.to_json())
    assert again.changed_since(0) is None
    assert again.changed_since(1) == (set(later), set())


@pytest.mark.parametrize("entry", [[1, "x/../y"], [1, str(uuid.uuid4()), 0], [1, str(uuid.uuid4()), "7"],
                                   [1, str(uuid.uuid4()), 7, 7], [5, str(uuid.uuid4())], [1, str(uuid.uuid4()), True]])
def test_a_damaged_change_entry_is_refused(entry):
    data = json.dumps({"generation": 2, "host": 1, "open": False, "changed": [entry]}).encode()
    with pytest.raises(ValueError):
        Generation.parse(data)
