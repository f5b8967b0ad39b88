"""The task store on a real filesystem: journal, group commit, snapshot, torn lines, older layouts."""

import datetime
import json
import os
import threading

import pytest

from hsm.errors import TaskMetaDataSaveError
from hsm.tasks import State, Task
from hsm.tasks import store as task_store
from hsm.tasks.store import JOURNAL, SNAPSHOT, TaskStore, read_records
from tests.tasks_helpers import fill, small_filesystem

# Larger than a page: once the small filesystem is full, no record fits in the journal's last page.
PAD = "x" * 8192


def task(task_id: str, state: State = State.QUEUED, pad: str = "") -> Task:
    args = {"n": task_id, "pad": pad} if pad else {"n": task_id}
    return Task(id=task_id, kind="k", verb="v", args=args, mode="non-transparent", state=state)


@pytest.fixture
def small_fs(tmp_path):
    with small_filesystem(str(tmp_path / "small")) as path:
        yield path


def journal_lines(folder: str) -> list[dict]:
    with open(os.path.join(folder, JOURNAL)) as f:
        return [json.loads(line) for line in f.read().splitlines()]  # every line whole


def test_saves_from_many_threads_are_all_durable(tmp_path):
    store = TaskStore(str(tmp_path))
    threads = [threading.Thread(target=lambda i=i: [store.save(task(f"t{i}-{j}", State.RUNNING))
                                                    for j in range(50)]) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records, seq = read_records(str(tmp_path))  # what a new hsmd would find, read afresh
    assert len(records) == 400 and seq == 400
    assert {record["state"] for record in records.values()} == {"running"}


def test_the_last_save_wins_and_removes_stay_removed(tmp_path):
    store = TaskStore(str(tmp_path))
    store.save(task("a"))
    store.save(task("a", State.FINISHED))
    store.save(task("b"))
    store.remove("b")
    again = TaskStore(str(tmp_path))
    assert [(t.id, t.state) for t in again.load_all()] == [("a", State.FINISHED)]
    assert os.path.getsize(tmp_path / JOURNAL) == 0  # folded into the snapshot at load
    assert json.loads((tmp_path / SNAPSHOT).read_text())["seq"] == 4


def test_many_removes_are_one_write(tmp_path, monkeypatch):
    store = TaskStore(str(tmp_path))
    for name in "abcd":
        store.save(task(name, State.FINISHED))
    syncs = []
    monkeypatch.setattr(task_store.os, "fdatasync", lambda fd: syncs.append(fd))
    store.remove_many(["a", "b", "c"])
    assert len(syncs) == 1
    assert [(line["id"], line["record"]) for line in journal_lines(str(tmp_path))[-3:]] == \
        [("a", None), ("b", None), ("c", None)]
    assert list(read_records(str(tmp_path))[0]) == ["d"]


def test_a_torn_last_line_is_skipped(tmp_path):
    store = TaskStore(str(tmp_path))
    store.save(task("a"))
    with open(tmp_path / JOURNAL, "a") as f:
        f.write('{"seq": 2, "id": "b", "rec')  # a crash inside a write
    assert [t.id for t in TaskStore(str(tmp_path)).load_all()] == ["a"]


def test_a_crash_between_snapshot_and_truncate_replays_nothing_twice(tmp_path):
    store = TaskStore(str(tmp_path))
    store.save(task("a"))
    store.save(task("a", State.FINISHED))
    journal = (tmp_path / JOURNAL).read_text()
    store.load_all()  # snapshot written, journal emptied
    (tmp_path / JOURNAL).write_text(journal)  # as if the crash came before the truncate
    [loaded] = TaskStore(str(tmp_path)).load_all()
    assert loaded.state is State.FINISHED


def test_the_journal_is_compacted_past_its_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(task_store, "JOURNAL_LIMIT", 4096)
    store = TaskStore(str(tmp_path))
    for i in range(100):
        store.save(task(f"t{i}"))
    assert os.path.getsize(tmp_path / JOURNAL) < 4096
    assert len(read_records(str(tmp_path))[0]) == 100


def test_one_file_per_task_from_an_older_hsmd_is_taken_over(tmp_path):
    (tmp_path / "old.task").write_text(json.dumps(task("old", State.RUNNING).record()))
    store = TaskStore(str(tmp_path))
    assert [t.id for t in store.load_all()] == ["old"]
    assert not (tmp_path / "old.task").exists()
    assert list(read_records(str(tmp_path))[0]) == ["old"]


def test_a_full_disk_fails_every_save_and_cuts_the_journal_back(small_fs):
    store = TaskStore(small_fs)
    store.save(task("before", pad=PAD))
    filler = fill(small_fs)
    size = os.path.getsize(os.path.join(small_fs, JOURNAL))
    with pytest.raises(TaskMetaDataSaveError) as info:
        store.save(task("lost", pad=PAD))  # part of it fits in the last page: that part is cut off again
    assert info.value.code == 407 and "No space left on device" in str(info.value)
    assert os.path.getsize(os.path.join(small_fs, JOURNAL)) == size
    errors = []
    threads = [threading.Thread(target=lambda i=i: _save_or_note(store, task(f"group{i}", pad=PAD), errors))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a save of the group was left waiting"
    assert len(errors) == 8 and all(e.code == 407 for e in errors)
    os.unlink(filler)
    store.save(task("after", pad=PAD))
    assert [line["id"] for line in journal_lines(small_fs)] == ["before", "after"]
    assert sorted(read_records(small_fs)[0]) == ["after", "before"]


def _save_or_note(store: TaskStore, record: Task, errors: list) -> None:
    try:
        store.save(record)
    except TaskMetaDataSaveError as e:
        errors.append(e)


def test_an_owed_record_goes_ahead_of_the_next_save(small_fs):
    store = TaskStore(small_fs)
    store.save(task("a", State.RUNNING))
    store.load_all()  # folded into the snapshot: the journal is empty, its next line needs a fresh page
    filler = fill(small_fs)
    with pytest.raises(TaskMetaDataSaveError):
        store.save(task("a", State.FAILED), owe=True)
    with pytest.raises(TaskMetaDataSaveError):
        store.flush()
    assert read_records(small_fs)[0]["a"]["state"] == "running"
    os.unlink(filler)
    store.save(task("b"))
    records = read_records(small_fs)[0]
    assert (records["a"]["state"], records["b"]["state"]) == ("failed", "queued")
    store.flush()  # nothing owed any more: no write
    assert len(journal_lines(small_fs)) == 2


def test_flush_writes_what_is_owed(small_fs):
    store = TaskStore(small_fs)
    store.load_all()
    filler = fill(small_fs)
    with pytest.raises(TaskMetaDataSaveError):
        store.save(task("a", State.FAILED), owe=True)
    os.unlink(filler)
    store.flush()
    assert read_records(small_fs)[0]["a"]["state"] == "failed"


def test_a_torn_tail_does_not_swallow_the_next_record(tmp_path):
    store = TaskStore(str(tmp_path))
    store.save(task("a"))
    with open(tmp_path / JOURNAL, "a") as f:
        f.write('{"seq": 2, "id": "b", "rec')  # a crash inside a write, and no compaction since
    again = TaskStore(str(tmp_path))
    again.save(task("c"))
    assert sorted(read_records(str(tmp_path))[0]) == ["a", "c"]


def test_a_record_that_is_not_json_fails_alone(tmp_path):
    store = TaskStore(str(tmp_path))
    odd = task("odd")
    odd.args["when"] = datetime.datetime.now()
    with pytest.raises(TaskMetaDataSaveError):
        store.save(odd)
    saved = threading.Event()
    threading.Thread(target=lambda: (store.save(task("next")), saved.set()), daemon=True).start()
    assert saved.wait(30), "the store no longer writes"
    assert sorted(read_records(str(tmp_path))[0]) == ["next"]
