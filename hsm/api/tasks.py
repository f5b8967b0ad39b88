"""The task verbs, with VDSM's names and answer keys."""

from __future__ import annotations

from hsm.api.verbs import verb
from hsm.tasks.manager import TaskManager


class TasksAPI:
    def __init__(self, manager: TaskManager) -> None:
        self._tasks = manager

    @verb()
    def getTaskStatus(self, taskID: str, spUUID: str | None = None) -> dict:
        return {"taskStatus": self._tasks.get(taskID).status()}

    @verb()
    def getTaskInfo(self, taskID: str, spUUID: str | None = None) -> dict:
        return {"TaskInfo": self._tasks.get(taskID).info()}

    @verb()
    def getAllTasksStatuses(self, spUUID: str | None = None) -> dict:
        return {"allTasksStatus": {task.id: task.status() for task in self._tasks.all()}}

    @verb()
    def getAllTasksInfo(self, spUUID: str | None = None) -> dict:
        return {"allTasksInfo": {task.id: task.info() for task in self._tasks.all()}}

    @verb()
    def getAllTasks(self, spUUID: str | None = None) -> dict:
        return {"tasks": {task.id: task.info() for task in self._tasks.all()}}

    @verb(mutating=True)
    def stopTask(self, taskID: str, spUUID: str | None = None) -> dict:
        self._tasks.stop(taskID)
        return {}

    @verb(mutating=True)
    def clearTask(self, taskID: str, spUUID: str | None = None) -> dict:
        self._tasks.clear(taskID)
        return {}

    @verb(mutating=True)
    def revertTask(self, taskID: str, spUUID: str | None = None) -> dict:
        self._tasks.revert(taskID)
        return {}

    @verb(mutating=True)
    def recoverTask(self, taskID: str, spUUID: str | None = None) -> dict:
        self._tasks.recover(taskID)
        return {}

    @verb(mutating=True)
    def setTaskMode(self, mode: str) -> dict:
        return {"mode": self._tasks.set_mode(mode)}
