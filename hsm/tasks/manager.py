"""The task manager: a bounded pool, persisted state moves, and recovery in two modes.

non-transparent: hsmd owns its tasks. It makes their ids, resumes or rolls
back unfinished ones at start-up, and forgets ended ones after finished_ttl
seconds, or sooner when more than max_finished have ended (the oldest first),
so that memory and the journal stay bounded under any load.
transparent: the caller (VDSM) owns them. Each task carries the caller's id;
after a restart unfinished tasks wait in `waitrecover` for recoverTask or
revertTask, and finished ones stay until clearTask.

A state that cannot be written (a full or failing disk under the journal)
does not take effect: the task aborts as for any error, and if that cannot be
written either it ends `failed` in memory with code 407, freeing its slot and
locks; the journal gets that end with its next write that succeeds.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hsm.errors import (
    ActionStopped,
    AddTaskError,
    GeneralException,
    HsmError,
    InvalidParameterException,
    TaskIdExists,
    TaskIdRequired,
    TaskMetaDataSaveError,
    TaskStateError,
    TaskStateTransitionError,
    UnknownTask,
)
from hsm.ids import is_id
from hsm.logctx import task_context
from hsm.tasks.resources import ResourceManager
from hsm.tasks.states import MOVES, State
from hsm.tasks.store import TaskStore
from hsm.tasks.task import Step, StepContext, Task, TaskKind

log = logging.getLogger("hsm.tasks")

TRANSPARENT = "transparent"
NON_TRANSPARENT = "non-transparent"
MODES = (NON_TRANSPARENT, TRANSPARENT)
ROLLING_BACK = (State.ABORTING, State.RACQUIRING, State.RECOVERING, State.RABORTING)


class _Shutdown(Exception):
    """hsmd is stopping: leave the task as it is on disk; the next start recovers it."""


class TaskManager:
    """`clock` gives the wall-clock times tasks record (created, updated) and finished_ttl runs on."""

    def __init__(self, folder: str, mode: str = NON_TRANSPARENT, pool_size: int = 10, max_tasks: int = 500,
                 finished_ttl: float = 3600, max_finished: int = 1000, lock_timeout: float = 120.0,
                 resources: ResourceManager | None = None, clock: Callable[[], float] = time.time) -> None:
        self.set_mode(mode)
        self._clock = clock
        self.store = TaskStore(folder)
        self.resources = resources or ResourceManager()
        self._max_tasks = max_tasks
        self._finished_ttl = finished_ttl
        self._max_finished = max_finished
        self._lock_timeout = lock_timeout
        self._kinds: dict[str, TaskKind] = {}
        self._tasks: dict[str, Task] = {}
        self._stops: dict[str, threading.Event] = {}
        self._active = 0
        # Ended non-transparent tasks, oldest end first: task id -> the time it ended.
        self._finished: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._claim = threading.Lock()  # one revertTask/recoverTask at a time takes a waiting task
        self._expiring = threading.Lock()
        self._shutdown = threading.Event()
        self._pool = ThreadPoolExecutor(pool_size, thread_name_prefix="task")

    # -- set-up ---------------------------------------------------------

    def register(self, kind: TaskKind) -> None:
        self._kinds[kind.name] = kind

    def set_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise InvalidParameterException(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        return mode

    def recover_all(self) -> dict[str, int]:
        """Load every stored task and act as its mode says; returns counts by what was done."""
        done: collections.Counter[str] = collections.Counter()
        loaded = sorted(self.store.load_all(), key=lambda t: t.updated)
        for task in loaded:
            self._tasks[task.id] = task
            self._stops[task.id] = threading.Event()
            if task.state.done:
                self._note_finished(task)
                done["kept"] += 1
                continue
            self._active += 1
            try:
                done[self._recover(task)] += 1
            except TaskMetaDataSaveError as e:
                # Nothing of it ran: it waits, as on disk, for recoverTask or revertTask (or the next start).
                log.error("Cannot recover %s: %s", task.id, e)
                self._to_waitrecover(task, persist=False, message=f"not recovered at start-up: {e}")
                done["waiting"] += 1
        self._expire(by_age=False)  # the newest max_finished ended tasks stay; finished_ttl runs on
        log.info("Recovered tasks: %s", dict(done) or "none")
        return dict(done)

    def _recover(self, task: Task) -> str:
        if task.state is State.WAITRECOVER:
            return "waiting"
        if task.mode == TRANSPARENT or task.kind not in self._kinds:
            self._to_waitrecover(task)
            return "waiting"
        if task.state in ROLLING_BACK or not self._resumable(task):
            self._submit(task, rollback=True)
            return "rolled back"
        self._submit(task, rollback=False)
        return "resumed"

    def _resumable(self, task: Task) -> bool:
        """Whether the task can run on: its current step had not begun, or may run again."""
        if task.state is not State.RUNNING or task.step >= task.nsteps:
            return True
        return self._steps(task)[task.step].idempotent

    # -- verbs ----------------------------------------------------------

    def start(self, kind: str, verb: str, args: dict, tags: list[str] | None = None, owner: str = "",
              task_id: str | None = None, persist: bool = True, waiting: bool = False) -> Task:
        """Create, persist and queue a task; raises at once when there is no room.

        `persist=False` leaves the queued task unwritten until its first step
        ends: only for callers that keep the intent durably elsewhere and start
        the task again from it after a crash (the image engine's fixes).
        `waiting=True` puts it in waitrecover instead of the queue: work a crash
        cut off before its task was written, left to recoverTask or revertTask.
        """
        if task_id is None:
            if self.mode == TRANSPARENT:
                raise TaskIdRequired(verb)
            task_id = str(uuid.uuid4())
        elif not is_id(task_id):
            raise InvalidParameterException(f"taskId={task_id!r}: letters, digits, '-' and '_' only")
        steps = self._kinds[kind].steps(args)
        self._expire()
        now = self._clock()
        task = Task(id=task_id, kind=kind, verb=verb, args=args, mode=self.mode, nsteps=len(steps),
                    tags=list(tags or []), owner=owner, created=now, updated=now)
        with self._lock:
            if task_id in self._tasks:
                raise TaskIdExists(task_id)
            if self._active >= self._max_tasks:
                raise AddTaskError(f"{self._active} tasks queued or running, the limit is {self._max_tasks}")
            self._active += 1
            self._tasks[task_id] = task
            self._stops[task_id] = threading.Event()
        try:
            self._move(task, State.PREPARING, persist=False)
            if waiting:
                self._to_waitrecover(task, message="interrupted before it started: recoverTask runs it")
                return task
            self._move(task, State.QUEUED, persist=persist)
        except HsmError:
            with self._lock:
                self._active -= 1
                del self._tasks[task_id]
                del self._stops[task_id]
            raise
        self._pool.submit(self._work, task, False)
        return task

    def has_room(self) -> bool:
        return self._active < self._max_tasks

    def get(self, task_id: str) -> Task:
        if not is_id(task_id):
            raise InvalidParameterException(f"taskID={task_id!r}")
        self._expire()
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTask(task_id) from None

    def all(self) -> list[Task]:
        self._expire()
        return list(self._tasks.values())

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(task.state.value for task in list(self._tasks.values())))

    def stop(self, task_id: str) -> None:
        """Ask a queued or running task to stop; it then rolls back what it did."""
        task = self.get(task_id)
        if task.state.done or task.state in (State.WAITRECOVER, *ROLLING_BACK):
            raise TaskStateError(f"{task_id} is {task.state.value}")
        self._stops[task_id].set()

    def clear(self, task_id: str) -> None:
        task = self.get(task_id)
        if not task.state.done:
            raise TaskStateError(f"{task_id} is {task.state.value}: only ended tasks can be cleared")
        self.store.remove(task_id)
        with self._lock:
            if self._tasks.get(task_id) is task:
                self._finished.pop(task_id, None)
            self._tasks.pop(task_id, None)
            self._stops.pop(task_id, None)

    def revert(self, task_id: str) -> None:
        """Roll back a task waiting in waitrecover; any other state, an ended one too, is refused (410)."""
        task = self.get(task_id)
        with self._claim:
            self._check_waiting(task, "reverted")
            self._submit(task, rollback=True)

    def recover(self, task_id: str) -> None:
        """Run a task waiting for recovery on from where it stopped (or on with its rollback)."""
        task = self.get(task_id)
        with self._claim:
            self._check_waiting(task, "recovered")
            if task.undo < 0 and not task.resumable:
                raise TaskStateError(f"{task_id}: step {task.step + 1} cannot run again; use revertTask")
            self._submit(task, rollback=task.undo >= 0)

    def _check_waiting(self, task: Task, what: str) -> None:
        if task.state is not State.WAITRECOVER:
            raise TaskStateError(f"{task.id} is {task.state.value}: only a task in waitrecover can be {what}")
        if task.kind not in self._kinds:
            raise TaskStateError(f"{task.id}: this hsmd cannot run tasks of kind {task.kind}")

    def shutdown(self, timeout: float) -> None:
        """Stop taking work; running steps see a stop at their next check and leave their task on disk."""
        self._shutdown.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for thread in list(getattr(self._pool, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))
        try:  # tasks that ended in memory only: the next start should find them ended
            self.store.flush()
        except TaskMetaDataSaveError as e:
            log.error("%s", e)

    # -- running --------------------------------------------------------

    def _steps(self, task: Task) -> list[Step]:
        return self._kinds[task.kind].steps(task.args)

    def _submit(self, task: Task, rollback: bool) -> None:
        if rollback:
            if task.state not in (State.WAITRECOVER, *ROLLING_BACK):
                self._move(task, State.ABORTING, code=ActionStopped.code,
                           message=f"interrupted in step {task.stage}, which cannot run again")
            self._move(task, State.RACQUIRING)
        else:
            # Not written: a crash before the task runs on recovers it exactly as the record on disk says.
            self._move(task, State.QUEUED, persist=False)
        self._pool.submit(self._work, task, rollback)

    def _work(self, task: Task, rollback: bool) -> None:
        with task_context(task.id):
            try:
                if rollback:
                    self._roll_back(task)
                else:
                    self._run(task)
            except _Shutdown:
                log.info("Left %s at %s for the next start", task.state.value, task.stage)
            except TaskMetaDataSaveError as e:
                self._end_failed(task, e)
            except Exception as e:
                log.exception("Task machinery failed")
                self._end_failed(task, GeneralException(f"task machinery failed: {type(e).__name__}: {e}"))

    def _run(self, task: Task) -> None:
        kind = self._kinds[task.kind]
        steps = kind.steps(task.args)
        stop = self._stops[task.id]
        try:
            self._move(task, State.ACQUIRING, persist=False)
            with self.resources.locked(kind.resources(task.args), self._lock_timeout):
                # Written only when it matters: after a crash, a task on disk as queued
                # runs its current step again, which is right if that step may run twice.
                first = steps[task.step] if task.step < len(steps) else None
                self._move(task, State.RUNNING, persist=first is None or not first.idempotent)
                context = StepContext(task, lambda: self._check(stop),
                                      lambda percent: setattr(task, "percent", percent))
                while task.step < len(steps):
                    self._check(stop)
                    step = steps[task.step]
                    log.debug("Step %s: %s", task.stage, step.name)
                    returned = step.run(context)
                    if isinstance(returned, dict):
                        task.result.update(returned)
                    if task.step + 1 < len(steps):
                        self._move(task, State.RUNNING, step=task.step + 1,
                                   percent=max(task.percent, 100 * (task.step + 1) // len(steps)))
                    else:  # the last step's end and the task's end are one write
                        break
                self._move(task, State.FINISHED, step=len(steps), percent=100, message="OK")
        except _Shutdown:
            raise
        except HsmError as e:
            self._abort(task, e)
        except Exception as e:
            log.exception("Step failed unexpectedly")
            self._abort(task, GeneralException(f"{type(e).__name__}: {e}"))

    def _check(self, stop: threading.Event) -> None:
        if self._shutdown.is_set():
            raise _Shutdown()
        if stop.is_set():
            raise ActionStopped("stopped by stopTask")

    def _abort(self, task: Task, error: HsmError) -> None:
        if self._shutdown.is_set():
            raise _Shutdown()
        log.info("Aborting: %s", error)
        self._move(task, State.ABORTING, code=error.code, message=str(error))
        self._roll_back(task)

    def _roll_back(self, task: Task) -> None:
        """Undo steps from the current one (which may have half run) down to the first."""
        steps = self._steps(task)
        kind = self._kinds[task.kind]
        if task.state is not State.RACQUIRING:
            self._move(task, State.RACQUIRING)
        first = task.undo if task.undo >= 0 else min(task.step, len(steps) - 1)
        try:
            with self.resources.locked(kind.resources(task.args), self._lock_timeout):
                self._move(task, State.RECOVERING, undo=first)
                context = StepContext(task, lambda: None, lambda percent: None)
                for index in range(first, -1, -1):
                    if self._shutdown.is_set():
                        raise _Shutdown()
                    self._move(task, State.RECOVERING, undo=index)
                    rollback = steps[index].rollback
                    if rollback is not None:
                        log.info("Rolling back step %d/%d: %s", index + 1, len(steps), steps[index].name)
                        rollback(context)
        except (_Shutdown, TaskMetaDataSaveError):  # a rollback that cannot be recorded goes no further
            raise
        except Exception as e:
            log.error("Rollback failed: %s", e)
            self._move(task, State.FAILED, message=f"{task.message}; rollback failed: {e}",
                       code=task.code or GeneralException.code)
            return
        if not task.code:
            task.code, task.message = ActionStopped.code, str(ActionStopped("reverted"))
        self._move(task, State.RECOVERED, undo=-1)

    def _to_waitrecover(self, task: Task, persist: bool = True, **changes: object) -> None:
        resumable = task.state not in ROLLING_BACK and self._kinds.get(task.kind) is not None \
            and self._resumable(task)
        self._move(task, State.WAITRECOVER, persist=persist, resumable=resumable, **changes)

    def _end_failed(self, task: Task, error: HsmError) -> None:
        """End a task whose machinery cannot go on (its state cannot be written): `failed`, here and now.

        Its slot and locks are freed and nothing more of it runs (a rollback
        that cannot be recorded could not be picked up after a crash). The
        failed record is owed to the journal, written ahead of the next save
        that succeeds; a restart before that finds the last state written and
        recovers from it as from a crash there.
        """
        if task.state.done:
            return
        message = f"{error}; stopped {task.state.value} at step {task.stage or '-'}"
        if task.code:
            message += f", after: {task.message}"
        changes: dict[str, Any] = {"state": State.FAILED, "code": error.code, "message": message,
                                   "updated": self._clock()}
        try:
            self.store.save(dataclasses.replace(task, **changes), owe=True)
        except TaskMetaDataSaveError as e:
            log.error("Ended failed in memory only, owed to the journal: %s", e)
        self._take(task, changes)

    # -- state ----------------------------------------------------------

    def _move(self, task: Task, state: State, persist: bool = True, **changes: Any) -> None:
        """Persist the task in `state` (with `changes`), then let it take effect.

        `persist=False` is only for moves after which a crash recovers exactly as
        from the state already on disk (preparing, acquiring, queued again to
        resume, and running into a step that may run twice).
        """
        if state is not task.state and state not in MOVES.get(task.state, ()):
            raise TaskStateTransitionError(f"{task.id}: {task.state.value} -> {state.value}")
        changes.update(state=state, updated=self._clock())
        if persist:
            self.store.save(dataclasses.replace(task, **changes))
        self._take(task, changes)  # readers see the new state only once it is on disk

    def _take(self, task: Task, changes: dict) -> None:
        """Apply a move in memory; its log line and freed slot come before any reader can see it."""
        before, state = task.state, changes["state"]
        ending = state.done and not before.done
        if state is not before:
            log.log(logging.INFO if state.done or state is State.ABORTING else logging.DEBUG,
                    "%s -> %s", before.value, state.value)
        if ending:
            with self._lock:
                self._active -= 1
        for name, value in changes.items():
            setattr(task, name, value)
        if ending:
            self._note_finished(task)

    def _note_finished(self, task: Task) -> None:
        """Count an ended task towards finished_ttl and max_finished: non-transparent ones only.

        Transparent tasks belong to the caller (VDSM) and stay until clearTask,
        whatever their number.
        """
        if task.mode == NON_TRANSPARENT and (self._finished_ttl > 0 or self._max_finished > 0):
            with self._lock:
                self._finished.pop(task.id, None)
                self._finished[task.id] = task.updated

    def expire(self) -> None:
        """Forget the ended tasks past finished_ttl or max_finished now (hsmd calls it periodically)."""
        self._expire()

    def _expire(self, by_age: bool = True) -> None:
        """Forget non-transparent tasks that ended more than finished_ttl seconds ago, or past max_finished.

        The oldest go first, in one journal write. A task is forgotten only once
        its removal is on disk; when the journal cannot be written, they wait
        for a later call (one caller at a time).
        """
        if not self._finished or not self._expiring.acquire(blocking=False):
            return
        try:
            with self._lock:
                old = self._expired(by_age)
            if not old:
                return
            try:
                self.store.remove_many([task.id for task in old])
            except TaskMetaDataSaveError as e:
                log.warning("Keeping %d ended tasks for now: %s", len(old), e)
                return
            with self._lock:
                for task in old:
                    if self._tasks.get(task.id) is task:
                        del self._tasks[task.id]
                        self._stops.pop(task.id, None)
                        self._finished.pop(task.id, None)
            log.debug("Forgot %d ended tasks", len(old))
        finally:
            self._expiring.release()

    def _expired(self, by_age: bool) -> list[Task]:
        """The ended tasks to forget, oldest first (called under self._lock)."""
        limit = self._clock() - self._finished_ttl if by_age and self._finished_ttl > 0 else None
        excess = len(self._finished) - self._max_finished if self._max_finished > 0 else 0
        old, gone = [], []
        for task_id, ended in self._finished.items():
            if excess <= 0 and (limit is None or ended >= limit):
                break
            excess -= 1
            task = self._tasks.get(task_id)
            if task is not None and task.state.done:
                old.append(task)
            else:  # no longer here (cleared): nothing to write
                gone.append(task_id)
        for task_id in gone:
            del self._finished[task_id]
        return old
