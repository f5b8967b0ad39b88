"""VDSM's fifteen task states, the moves between them, and the engine's view of them."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    UNKNOWN = "unknown"
    INIT = "init"
    PREPARING = "preparing"
    BLOCKED = "blocked"
    ACQUIRING = "acquiring"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTING = "aborting"
    WAITRECOVER = "waitrecover"
    RACQUIRING = "racquiring"
    RECOVERING = "recovering"
    RABORTING = "raborting"
    RECOVERED = "recovered"
    FAILED = "failed"

    @property
    def done(self) -> bool:
        return self in DONE


DONE = frozenset({State.FINISHED, State.RECOVERED, State.FAILED})

# Where a task may go from each state. Two differences from VDSM's table: a
# task waits for its worker (queued) before it takes its locks (acquiring), so
# no lock is held by a task that is not running; and after a restart an
# interrupted task may be queued again (resumed) or sent to roll back. An ended
# task stays ended: revertTask rolls back only a task waiting in waitrecover.
MOVES: dict[State, frozenset[State]] = {
    State.INIT: frozenset({State.PREPARING}),
    State.PREPARING: frozenset({State.QUEUED, State.ABORTING, State.BLOCKED, State.WAITRECOVER}),
    State.BLOCKED: frozenset({State.PREPARING, State.ABORTING}),
    State.QUEUED: frozenset({State.ACQUIRING, State.ABORTING, State.WAITRECOVER}),
    State.ACQUIRING: frozenset({State.RUNNING, State.QUEUED, State.ABORTING, State.WAITRECOVER}),
    State.RUNNING: frozenset({State.FINISHED, State.QUEUED, State.ABORTING, State.WAITRECOVER}),
    State.ABORTING: frozenset({State.RACQUIRING, State.WAITRECOVER, State.FAILED}),
    State.WAITRECOVER: frozenset({State.RACQUIRING, State.QUEUED, State.RABORTING}),
    State.RACQUIRING: frozenset({State.RECOVERING, State.RABORTING, State.WAITRECOVER, State.FAILED}),
    State.RECOVERING: frozenset({State.RECOVERED, State.FAILED, State.RACQUIRING, State.RABORTING,
                                 State.WAITRECOVER}),
    State.RABORTING: frozenset({State.FAILED, State.RACQUIRING, State.WAITRECOVER}),
    State.FINISHED: frozenset(),
    State.RECOVERED: frozenset(),
    State.FAILED: frozenset(),
}

# The engine's view, as VDSM gave it (taskState, taskResult).
_ENGINE_STATE = {
    State.PREPARING: "running", State.BLOCKED: "running", State.ACQUIRING: "running",
    State.QUEUED: "running", State.RUNNING: "running",
    State.WAITRECOVER: "cleaning", State.RACQUIRING: "cleaning", State.RECOVERING: "cleaning",
    State.RABORTING: "aborting", State.ABORTING: "aborting",
    State.RECOVERED: "finished", State.FAILED: "finished", State.FINISHED: "finished",
    State.INIT: "init", State.UNKNOWN: "unknown",
}
_ENGINE_RESULT = {State.FINISHED: "success", State.RECOVERED: "cleanSuccess", State.FAILED: "cleanFailure"}


def engine_state(state: State) -> str:
    return _ENGINE_STATE[state]


def engine_result(state: State) -> str:
    return _ENGINE_RESULT.get(state, "")
