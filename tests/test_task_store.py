"""The task store on a real filesystem: journal, group commit, snapshot, torn lines, older layouts."""

import json
import os
import threading

from hsm.tasks import State, Task
from hsm.tasks import store as task_store
from hsm.tasks.store import JOURNAL, SNAPSHOT, TaskStore, read_records


def task(task_id: str, state: State = State.QUEUED) -> Task:
    return Task(id=task_id, kind="k", verb="v", args={"n": task_id}, mode="non-transparent", state=state)


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
