"""Task records on disk: a snapshot and an append-only journal, written with group commit.

Every save appends the task's whole record as one JSON line to `journal` and
returns once the line is durable (fdatasync). Saves from many threads at once
share one write and one fdatasync (group commit), so the cost of durability
does not grow with the number of tasks changing state together. At start-up
(load_all), and whenever the journal passes JOURNAL_LIMIT bytes, the live
records go to `snapshot` (one atomic write) and the journal starts again
empty. Each line carries a sequence number and the snapshot the last number it
holds, so a crash between those two steps replays nothing twice. A torn last
line (a crash inside a write) is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from hsm.atomicfile import atomic_write, fsync_dir
from hsm.errors import TaskMetaDataLoadError, TaskMetaDataSaveError
from hsm.tasks.task import Task

log = logging.getLogger("hsm.tasks")

SNAPSHOT = "snapshot"
JOURNAL = "journal"
JOURNAL_LIMIT = 16 << 20
LEGACY_SUFFIX = ".task"  # one file per task, as hsm 0.1 wrote them: read once, then folded into the snapshot


def read_records(folder: str) -> tuple[dict[str, dict], int]:
    """The live records in `folder` by task id, and the last sequence number; reads only."""
    records: dict[str, dict] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name) if os.path.isdir(folder) else ():
        if entry.name.endswith(LEGACY_SUFFIX):
            try:
                with open(entry.path, encoding="utf-8") as f:
                    record = json.load(f)
                records[record["id"]] = record
            except (OSError, ValueError, KeyError) as e:
                log.error("%s", TaskMetaDataLoadError(f"{entry.path}: {e}"))
    seq = 0
    try:
        with open(os.path.join(folder, SNAPSHOT), encoding="utf-8") as f:
            snapshot = json.load(f)
        seq = snapshot["seq"]
        records.update((record["id"], record) for record in snapshot["records"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError) as e:
        raise TaskMetaDataLoadError(f"{folder}/{SNAPSHOT}: {e}") from None
    base = seq
    try:
        with open(os.path.join(folder, JOURNAL), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                try:
                    entry = json.loads(line)
                    if entry["seq"] <= base:
                        continue
                    seq = max(seq, entry["seq"])
                    if entry["record"] is None:
                        records.pop(entry["id"], None)
                    else:
                        records[entry["id"]] = entry["record"]
                except (ValueError, KeyError, TypeError):
                    log.warning("Skipping a torn line %d of the task journal in %s", number, folder)
    except FileNotFoundError:
        pass
    return records, seq


class TaskStore:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._records, self._seq = read_records(folder)
        self._journal = os.path.join(folder, JOURNAL)
        self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()
        self._pending: list[tuple[str, dict | None, list]] = []
        self._leading = False

    def save(self, task: Task) -> None:
        self._commit(task.id, task.record())

    def remove(self, task_id: str) -> None:
        self._commit(task_id, None)

    def load_all(self) -> list[Task]:
        """Every stored task, after folding the journal into a fresh snapshot; bad records are logged.

        Call it before saving starts (TaskManager.recover_all does, at start-up).
        """
        self._compact(drop_legacy=True)
        tasks = []
        for task_id, record in list(self._records.items()):
            try:
                tasks.append(Task.from_record(record))
            except (ValueError, TypeError, KeyError) as e:
                log.error("%s", TaskMetaDataLoadError(f"task {task_id}: {e}"))
        return tasks

    # -- group commit -------------------------------------------------------

    def _commit(self, task_id: str, record: dict | None) -> None:
        outcome: list = [threading.Event(), None]
        with self._lock:
            self._pending.append((task_id, record, outcome))
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead()
        outcome[0].wait()
        if outcome[1] is not None:
            raise TaskMetaDataSaveError(f"{task_id}: {outcome[1]}")

    def _lead(self) -> None:
        """Write what is pending, as one append and one fdatasync, until nothing is."""
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._leading = False
                    return
            lines = []
            for task_id, record, _ in batch:
                self._seq += 1
                lines.append(json.dumps({"seq": self._seq, "id": task_id, "record": record}, sort_keys=True))
            error = self._append(("\n".join(lines) + "\n").encode())
            if error is None:
                for task_id, record, _ in batch:
                    if record is None:
                        self._records.pop(task_id, None)
                    else:
                        self._records[task_id] = record
            for _, _, outcome in batch:
                outcome[1] = error
                outcome[0].set()
            if error is None and os.fstat(self._fd).st_size > JOURNAL_LIMIT:
                self._compact()

    def _append(self, data: bytes) -> OSError | None:
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fdatasync(self._fd)
            return None
        except OSError as e:
            try:
                os.ftruncate(self._fd, start)  # no half line for the next append to follow
            except OSError:
                pass
            return e

    def _compact(self, drop_legacy: bool = False) -> None:
        """Write every live record to the snapshot, then empty the journal (only the leader, or at load)."""
        snapshot = {"seq": self._seq, "records": list(self._records.values())}
        try:
            atomic_write(os.path.join(self.folder, SNAPSHOT), json.dumps(snapshot, sort_keys=True).encode())
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            if drop_legacy:
                legacy = [e.path for e in os.scandir(self.folder) if e.name.endswith(LEGACY_SUFFIX)]
                for path in legacy:
                    os.unlink(path)
                if legacy:
                    fsync_dir(self.folder)
        except OSError as e:  # the journal still holds everything: compaction can wait
            log.error("Cannot compact the task journal in %s: %s", self.folder, e)
