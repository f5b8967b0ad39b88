"""A task: a persisted record, and the steps that its kind makes of its arguments."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hsm.tasks.states import State, engine_result, engine_state


@dataclass(frozen=True)
class Step:
    """One unit of a task's work.

    `idempotent`: running it again after an interruption is safe, so a task
    cut off inside it resumes by running it again. `rollback` undoes it (and
    must itself be safe to run twice). A step that is neither cannot be
    resumed nor undone: a task cut off inside it fails.
    """

    name: str
    run: Callable[[StepContext], Any]
    idempotent: bool = False
    rollback: Callable[[StepContext], None] | None = None


@dataclass(frozen=True)
class TaskKind:
    """What a verb's task does: `steps(args)` rebuilds the same steps after a restart."""

    name: str
    steps: Callable[[dict], list[Step]]
    resources: Callable[[dict], list[tuple[str, str, str]]] = lambda args: []


@dataclass
class Task:
    """The persisted record. Every change goes to disk before it takes effect."""

    id: str
    kind: str
    verb: str
    args: dict
    mode: str
    state: State = State.INIT
    step: int = 0            # the step running, or the next to run
    nsteps: int = 0
    undo: int = -1           # the step being rolled back; -1 when not rolling back
    resumable: bool = True   # in waitrecover: whether recoverTask can run on from `step`
    percent: int = -1
    code: int = 0
    message: str = ""
    result: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    owner: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def record(self) -> dict:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_record(cls, data: dict) -> Task:
        data = dict(data)
        data["state"] = State(data["state"])
        return cls(**data)

    @property
    def stage(self) -> str:
        if not self.nsteps:
            return ""
        current = self.undo if self.undo >= 0 else self.step
        return f"{min(current + 1, self.nsteps)}/{self.nsteps}"

    def status(self) -> dict:
        """The wire status: VDSM's taskState/taskResult view beside hsm's full state."""
        return {
            "taskID": self.id, "taskState": engine_state(self.state), "taskResult": engine_result(self.state),
            "code": self.code, "message": self.message or ("OK" if self.state.done else "running"),
            "state": self.state.value, "stage": self.stage, "percentComplete": self.percent,
            "verb": self.verb, "tags": list(self.tags),
        }

    def info(self) -> dict:
        return {**self.status(), "id": self.id, "owner": self.owner, "mode": self.mode,
                "created": self.created, "updated": self.updated, "result": self.result}


class StepContext:
    """What a running step sees: its task's arguments, progress, and the stop check."""

    def __init__(self, task: Task, check: Callable[[], None], on_progress: Callable[[int], None]) -> None:
        self.task = task
        self.args = task.args
        self._check = check
        self._on_progress = on_progress

    def progress(self, percent: int) -> None:
        """Report 0-100 within the whole task (kept in memory; persisted at step ends)."""
        self._on_progress(max(0, min(100, int(percent))))

    def check_stop(self) -> None:
        """Raise if the task must stop (stopTask, or hsmd stopping); call it between chunks of work."""
        self._check()
