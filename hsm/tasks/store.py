"""Task records on disk: one JSON file per task, written atomically."""

from __future__ import annotations

import json
import logging
import os

from hsm.atomicfile import atomic_remove, atomic_write
from hsm.errors import TaskMetaDataLoadError, TaskMetaDataSaveError
from hsm.tasks.task import Task

log = logging.getLogger("hsm.tasks")


class TaskStore:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def _path(self, task_id: str) -> str:
        return os.path.join(self.folder, task_id + ".task")

    def save(self, task: Task) -> None:
        try:
            atomic_write(self._path(task.id), json.dumps(task.record(), sort_keys=True).encode())
        except OSError as e:
            raise TaskMetaDataSaveError(f"{task.id}: {e}") from None

    def remove(self, task_id: str) -> None:
        atomic_remove(self._path(task_id))

    def load_all(self) -> list[Task]:
        """Every stored task; unreadable records are logged and left in place for a human."""
        tasks = []
        for entry in os.scandir(self.folder):
            if not entry.name.endswith(".task"):
                continue
            try:
                with open(entry.path, encoding="utf-8") as f:
                    tasks.append(Task.from_record(json.load(f)))
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.error("%s", TaskMetaDataLoadError(f"{entry.path}: {e}"))
        return tasks
