"""The task verbs, with VDSM's names and answer keys.

Called with VDSM's spUUID argument (hsm.api.legacy_tasks) they answer exactly
VDSM's shapes; with the task id alone, the new API's (a superset of VDSM's).
"""

from __future__ import annotations

from hsm.api import legacy_tasks as legacy
from hsm.api.verbs import verb
from hsm.tasks.manager import TaskManager


class TasksAPI:
    def __init__(self, manager: TaskManager) -> None:
        self._tasks = manager

    @verb()
    def getTaskStatus(self, taskID: str, spUUID: str | None = None, options: dict | None = None) -> dict:
        task = self._tasks.get(taskID)
        return {"taskStatus": legacy.status(task) if legacy.is_legacy(spUUID, options) else task.status()}

    @verb()
    def getTaskInfo(self, taskID: str, spUUID: str | None = None, options: dict | None = None) -> dict:
        task = self._tasks.get(taskID)
        return {"TaskInfo": legacy.info(task) if legacy.is_legacy(spUUID, options) else task.info()}

    @verb()
    def getAllTasksStatuses(self, spUUID: str | None = None, options: dict | None = None) -> dict:
        shape = legacy.status if legacy.is_legacy(spUUID, options) else lambda task: task.status()
        return {"allTasksStatus": {task.id: shape(task) for task in legacy.pool_tasks(self._tasks)}}

    @verb()
    def getAllTasksInfo(self, spUUID: str | None = None, options: dict | None = None) -> dict:
        shape = legacy.info if legacy.is_legacy(spUUID, options) else lambda task: task.info()
        return {"allTasksInfo": {task.id: shape(task) for task in legacy.pool_tasks(self._tasks)}}

    @verb(mutating=True)
    def stopTask(self, taskID: str, spUUID: str | None = None, options: dict | None = None) -> dict:
        # VDSM's options.force is taken and changes nothing: a stopped task here always rolls back what it did.
        legacy.is_legacy(spUUID, options)
        self._tasks.stop(taskID)
        return {}

    @verb(mutating=True)
    def clearTask(self, taskID: str, spUUID: str | None = None, options: dict | None = None) -> dict:
        legacy.is_legacy(spUUID, options)
        self._tasks.clear(taskID)
        return {}

    @verb(mutating=True)
    def revertTask(self, taskID: str, spUUID: str | None = None, options: dict | None = None) -> dict:
        legacy.is_legacy(spUUID, options)
        self._tasks.revert(taskID)
        return {}

    @verb(mutating=True)
    def recoverTask(self, taskID: str, spUUID: str | None = None) -> dict:
        self._tasks.recover(taskID)
        return {}

    @verb(mutating=True)
    def setTaskMode(self, mode: str) -> dict:
        return {"mode": self._tasks.set_mode(mode)}
