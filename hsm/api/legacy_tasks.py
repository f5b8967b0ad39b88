"""VDSM's task verbs: the shapes VDSM answered, and getAllTasks.

The other task verbs share their names with the new API (hsm.api.tasks):
called with VDSM's spUUID argument (even an empty one) they answer exactly
VDSM's keys through the functions here; called with the task id alone they
answer the new API's status, a superset of VDSM's. Either way the pool
listings leave out tasks tagged "hsm" (spmStart's), as VDSM listed only its
"spm" tasks there.
"""

from __future__ import annotations

from hsm.api.dispatch import options_of
from hsm.api.verbs import verb
from hsm.errors import InvalidParameterException
from hsm.storage.domains import check_uuid
from hsm.tasks import Task, TaskManager

HSM_TAG = "hsm"


def is_legacy(spUUID: object, options: object) -> bool:
    """Whether a task verb was called in VDSM's form, with spUUID (any UUID, or empty) and maybe options."""
    options_of(options)
    if spUUID is None:
        return False
    if spUUID != "":
        check_uuid("spUUID", spUUID, blank=True)
    return True


def pool_tasks(tasks: TaskManager) -> list[Task]:
    """The tasks VDSM's getAllTasksStatuses and getAllTasksInfo list: all but hsm-tagged ones."""
    return [task for task in tasks.all() if HSM_TAG not in task.tags]


def status(task: Task) -> dict:
    """VDSM's taskStatus: {taskID, taskState, taskResult, code, message}."""
    full = task.status()
    return {key: full[key] for key in ("taskID", "taskState", "taskResult", "code", "message")}


def info(task: Task) -> dict:
    """VDSM's TaskInfo: {id, verb}."""
    return {"id": task.id, "verb": task.verb}


def details(task: Task) -> dict:
    """VDSM's getAllTasks entry: {id, verb, state, code, message, result, tag}."""
    full = task.status()
    return {"id": task.id, "verb": task.verb, "state": task.state.value, "code": full["code"],
            "message": full["message"], "result": task.result, "tag": HSM_TAG if HSM_TAG in task.tags else "spm"}


class LegacyTasksAPI:
    def __init__(self, manager: TaskManager) -> None:
        self._tasks = manager

    @verb()
    def getAllTasks(self, tags: list | dict | None = None) -> dict:
        """Every task, hsm-tagged ones too; `tags` (vdsClient always sends a list, [] for all) keeps those
        tagged so ("spm" or "hsm"). VDSM's `options` struct in its place is taken and changes nothing."""
        if tags is not None and not isinstance(tags, (list, dict)) or \
                isinstance(tags, list) and not all(isinstance(tag, str) for tag in tags):
            raise InvalidParameterException(f"tags={tags!r}: expected a list of task tags")
        wanted = set(tags) if isinstance(tags, list) else set()
        found = {task.id: details(task) for task in self._tasks.all()}
        return {"tasks": {task_id: entry for task_id, entry in found.items() if not wanted or entry["tag"] in wanted}}
