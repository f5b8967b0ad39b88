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

A write that fails (ENOSPC, EIO) fails every save of its group, and the
journal is cut back to where it was; if even that fails, the next record
starts on a line of its own. The store stays usable: the next save tries
again. A record saved with `owe=True` that could not be written is kept and
written ahead of the next save that succeeds (a task that ended in memory
because its journal was full).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, replace

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
                if not line.strip():  # left after a torn line, which the next record does not join
                    continue
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


@dataclass(frozen=True)
class _Line:
    """One record waiting for the journal; `body` is its JSON, made by the saving thread."""

    task_id: str
    record: dict | None
    body: str
    owe: bool = False
    outcome: list | None = None  # [Event, error]: how the saving thread learns the write's fate


class TaskStore:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._records, self._seq = read_records(folder)
        self._journal = os.path.join(folder, JOURNAL)
        self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()
        self._pending: list[_Line] = []
        self._owed: dict[str, _Line] = {}
        self._leading = False
        self._torn = _ends_torn(self._journal)  # a crash inside a write left half a line

    def save(self, task: Task, owe: bool = False) -> None:
        """Return once the record is durable, else raise TaskMetaDataSaveError.

        `owe=True`: a record that could not be written is kept and written
        ahead of the next save that succeeds (or by flush).
        """
        self._commit(task.id, task.record(), owe)

    def remove(self, task_id: str) -> None:
        self._commit(task_id, None)

    def remove_many(self, task_ids: list[str]) -> None:
        """Remove many records with one journal write; all or none take effect."""
        if task_ids:
            self._commit_lines([_Line(task_id, None, "null") for task_id in task_ids], f"{len(task_ids)} tasks")

    def flush(self) -> None:
        """Write the records still owed, if any; raises TaskMetaDataSaveError if that fails again."""
        with self._lock:
            owed = bool(self._owed)
        if owed:
            self._commit("", None, marker=True)

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

    def _commit(self, task_id: str, record: dict | None, owe: bool = False, marker: bool = False) -> None:
        try:
            body = "" if marker else json.dumps(record, sort_keys=True)
        except (TypeError, ValueError) as e:  # refused here, alone: the group's write never sees it
            raise TaskMetaDataSaveError(f"{task_id}: {e}") from None
        self._commit_lines([_Line(task_id, record, body, owe)], task_id or "owed records")

    def _commit_lines(self, lines: list[_Line], what: str) -> None:
        """Queue `lines` together (so one group write takes them all) and wait for that write's fate."""
        outcome: list = [threading.Event(), None]
        with self._lock:
            self._pending.extend(replace(line, outcome=outcome) for line in lines)
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead()
        outcome[0].wait()
        if outcome[1] is not None:
            raise TaskMetaDataSaveError(f"{what}: {outcome[1]}")

    def _lead(self) -> None:
        """Write what is pending (owed records first), as one append and one fdatasync, until nothing is."""
        while True:
            with self._lock:
                if not self._pending:  # owed records wait for a save: a failing disk is not retried in a loop
                    self._leading = False
                    return
                batch = [*self._owed.values(), *self._pending]
                self._owed, self._pending = {}, []
            try:
                error = self._write(batch)
            except Exception as e:  # never leave the group (and every later save) waiting
                log.exception("Task journal write failed")
                error = e
            with self._lock:
                for line in batch:
                    if error is not None and line.owe:
                        self._owed[line.task_id] = replace(line, outcome=None)
            for line in batch:
                if line.outcome is not None:
                    line.outcome[1] = error
                    line.outcome[0].set()

    def _write(self, batch: list[_Line]) -> Exception | None:
        lines = []
        for line in batch:
            if line.body:
                self._seq += 1
                lines.append(f'{{"id": {json.dumps(line.task_id)}, "record": {line.body}, "seq": {self._seq}}}\n')
        error = self._append("".join(lines).encode()) if lines else None
        if error is not None:
            log.error("Cannot write %d task records to %s: %s", len(lines), self._journal, error)
            return error
        for line in batch:
            if not line.body:
                continue
            if line.record is None:
                self._records.pop(line.task_id, None)
            else:
                self._records[line.task_id] = line.record
        try:
            full = os.fstat(self._fd).st_size > JOURNAL_LIMIT
        except OSError:  # the records are durable: only compaction waits
            full = False
        if full:
            self._compact()
        return None

    def _append(self, data: bytes) -> OSError | None:
        """Append and fdatasync; on failure cut the journal back, so no half line stays for the next record."""
        start = None
        try:
            start = os.fstat(self._fd).st_size
            view = memoryview(b"\n" + data if self._torn else data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fdatasync(self._fd)
            self._torn = False
            return None
        except OSError as e:
            if start is not None:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    self._torn = True  # part of a line may remain: the next record begins a new line
            return e

    def _compact(self, drop_legacy: bool = False) -> None:
        """Write every live record to the snapshot, then empty the journal (only the leader, or at load)."""
        snapshot = {"seq": self._seq, "records": list(self._records.values())}
        try:
            atomic_write(os.path.join(self.folder, SNAPSHOT), json.dumps(snapshot, sort_keys=True).encode())
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._torn = False
            if drop_legacy:
                legacy = [e.path for e in os.scandir(self.folder) if e.name.endswith(LEGACY_SUFFIX)]
                for path in legacy:
                    os.unlink(path)
                if legacy:
                    fsync_dir(self.folder)
        except OSError as e:  # the journal still holds everything: compaction can wait
            log.error("Cannot compact the task journal in %s: %s", self.folder, e)


def _ends_torn(path: str) -> bool:
    """Whether the file's last line lacks its newline."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False
