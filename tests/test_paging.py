"""Paged answers on a real hsmd: getImageList and checkStorageRepository with `options.limit` and `options.marker`.

Pages are cut in id order, so each page starts after the last id of the one
before (its `marker`): images made or removed between pages never make an id
come twice, and every image there from the first page to the last comes once.
"""

import os
import subprocess

import pytest

from tests.hsmd import HSM_CLI
from tests.images_helpers import GiB, code, local_path, new_disk, new_snapshot, ok

RECORDS_ONLY = {"autoFix": False}  # a committed disk whose volume a fix makes later: one check entry each


def record(proxy) -> str:
    return ok(proxy.createVirtualDisk("local", str(GiB), "", {}, RECORDS_ONLY))["imageId"]


def pages(call, limit: int, **options) -> list[dict]:
    """Every answer of a paged walk, the first without a marker, each next one from the previous `marker`."""
    answers = [ok(call(dict(options, limit=limit)))]
    while answers[-1].get("marker"):
        answers.append(ok(call(dict(options, limit=limit, marker=answers[-1]["marker"]))))
    assert "marker" not in answers[-1]
    return answers


def test_gp_pages_cover_every_image_exactly_once(proxy):
    disk = new_disk(proxy)
    snapshot = new_snapshot(proxy, disk)
    made = {disk, snapshot} | {record(proxy) for _ in range(21)}
    whole = ok(proxy.getImageList("local"))
    assert "marker" not in whole  # without limit: the answer of before
    assert set(whole["images"]) == made

    answers = pages(lambda options: proxy.getImageList("local", options), limit=5)
    listed = [image_id for answer in answers for image_id in answer["images"]]
    assert listed == sorted(made)  # in id order, each once
    assert [len(answer["images"]) for answer in answers] == [5, 5, 5, 5, 3]
    assert all(answer["marker"] == answer["images"][-1] for answer in answers[:-1])

    one_page = ok(proxy.getImageList("local", {"limit": 23}))
    assert one_page["images"] == sorted(made) and "marker" not in one_page  # nothing left: no empty page to ask
    disks = pages(lambda options: proxy.getImageList("local", options), limit=4, kind="disk")
    assert [i for answer in disks for i in answer["images"]] == sorted(made - {snapshot})
    assert ok(proxy.getImageList("local", {"kind": "snapshot", "limit": 4}))["images"] == [snapshot]
    rest = ok(proxy.getImageList("local", {"marker": sorted(made)[19]}))  # a marker alone: the rest, up to 10,000
    assert rest["images"] == sorted(made)[20:] and "marker" not in rest
    assert ok(proxy.getImageList("local", {"limit": 5, "marker": ""}))["images"] == sorted(made)[:5]  # "": the start


def test_gp_creates_and_removes_between_pages_list_nothing_twice(proxy):
    before = {record(proxy) for _ in range(30)}
    removed, added, listed = set(), set(), []
    answer = ok(proxy.getImageList("local", {"limit": 4}))
    listed += answer["images"]
    while answer.get("marker"):
        # behind the cursor and ahead of it: one removed from what is left, two made (ids are random)
        ahead = sorted(before - removed - set(listed))
        if ahead:
            ok(proxy.removeImage("local", ahead[-1], RECORDS_ONLY))
            removed.add(ahead[-1])
        added |= {record(proxy), record(proxy)}
        answer = ok(proxy.getImageList("local", {"limit": 4, "marker": answer["marker"]}))
        listed += answer["images"]
    assert len(listed) == len(set(listed)) and listed == sorted(listed)
    assert set(listed) >= before - removed  # every image there all along, exactly once
    assert not set(listed) & removed  # removed ahead of the cursor: never listed
    assert set(listed) <= before | added


@pytest.mark.parametrize("options", [
    {"limit": 0}, {"limit": 10001}, {"limit": -1}, {"limit": "5"}, {"limit": True}, {"limit": 2.5},
    {"marker": "../escape"}, {"marker": 7}, {"marker": "a b"}, {"limit": 5, "marker": "x" * 129},
])
def test_ep_bad_paging_options_are_refused(proxy, options):
    assert code(proxy.getImageList("local", options)) == 1000
    assert code(proxy.checkStorageRepository("local", options)) == 1000


def test_ep_paging_an_unknown_repository(proxy):
    assert code(proxy.getImageList("nowhere", {"limit": 5})) == 358
    assert code(proxy.checkStorageRepository("nowhere", {"limit": 5})) == 358


def test_gp_check_pages_its_fixes(hsmd, proxy):
    pending = {record(proxy) for _ in range(9)}
    repo = local_path(hsmd)
    damaged = "0" * 8 + "-0000-4000-8000-" + "0" * 12
    with open(os.path.join(repo, "images", damaged + ".json"), "w") as f:
        f.write("{not json")
    with open(os.path.join(repo, "images", "left-over.txt"), "w") as f:  # not a record: no image owns it
        f.write("x")
    whole = ok(proxy.checkStorageRepository("local"))
    assert "marker" not in whole
    expected = sorted(pending | {damaged})
    assert sorted(entry["imageId"] for entry in whole["fixes"]) == ["", *expected]

    answers = pages(lambda options: proxy.checkStorageRepository("local", options), limit=3)
    entries = [entry for answer in answers for entry in answer["fixes"]]
    assert [entry["imageId"] for entry in entries] == [*expected, ""]  # id order; the files no image owns last
    assert entries[0]["fixable"] is False and entries[0]["code"] == 207  # the damaged record, first by its id
    assert sorted(entries, key=str) == sorted(whole["fixes"], key=str)  # the same entries as one answer
    assert all(answer["marker"] == answer["fixes"][-1]["imageId"] for answer in answers[:-1])
    assert max(len(answer["fixes"]) for answer in answers) == 3

    fix = next(entry for entry in entries if entry["imageId"] == expected[-1])
    ok(proxy.fixStorageRepository("local", fix["fix"], {}))  # a paged entry's fix runs as any other
    after = ok(proxy.checkStorageRepository("local", {"limit": 10000, "marker": expected[-2]}))
    assert "marker" not in after and [entry["imageId"] for entry in after["fixes"]] in ([expected[-1], ""], [""])


def test_gp_cli_image_list_fetches_every_page(hsmd, proxy):
    made = {record(proxy) for _ in range(7)}
    done = subprocess.run([HSM_CLI, "--address", hsmd.address, "image", "list", "--page", "2", "--noheadings"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == sorted(made)
    calls = ok(proxy.getStats())["stats"]["verbs"]["getImageList"]["calls"]
    assert calls == 4  # pages of 2, 2, 2 and 1
    bad = subprocess.run([HSM_CLI, "--address", hsmd.address, "image", "list", "--page", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "1000" in bad.stderr
