"""runTestTask: a task of sleeping steps, for tests and benchmarks ([tasks] diagnostics = true).

Each step is {seconds, idempotent, rollback, fail, failUndo, crash, crashUndo,
journal}. A step appends "run N" to a journal file and its undo "undo N"
(unless journal is false), so a test can see what really ran. `crash`
("before" or "after" the step's work) and `crashUndo` kill hsmd with SIGKILL
at that exact point, once (the journal remembers), to test recovery from a
real kill -9.
"""

from __future__ import annotations

import os
import signal
import time

from hsm.api.dispatch import options_of
from hsm.api.verbs import verb
from hsm.errors import CannotDeleteVolume, InvalidParameterException, VolumeCreationError
from hsm.tasks import Step, StepContext, TaskKind
from hsm.tasks.manager import TaskManager

KIND = "diagnostics.sleep"
MAX_STEPS = 100




class SleepSteps:
    def __init__(self, journal_dir: str) -> None:
        self.journal_dir = journal_dir
        os.makedirs(journal_dir, exist_ok=True)

    def journal(self, context: StepContext, line: str) -> None:
        with open(os.path.join(self.journal_dir, context.task.id + ".journal"), "a") as f:
            f.write(line + "\n")

    def crash_once(self, context: StepContext, where: str) -> None:
        """SIGKILL hsmd here, unless this crash already happened in an earlier life."""
        path = os.path.join(self.journal_dir, context.task.id + ".journal")
        line = f"crash {where}"
        if os.path.exists(path):
            with open(path) as f:
                if line in f.read().splitlines():
                    return
        self.journal(context, line)
        os.kill(os.getpid(), signal.SIGKILL)

    def kind(self) -> TaskKind:
        return TaskKind(KIND, self.steps, lambda args: [("01_image", name, "exclusive")
                                                        for name in args.get("locks", [])])

    def steps(self, args: dict) -> list[Step]:
        specs = args["steps"]
        return [Step(f"sleep {spec.get('seconds', 0)}s", self._runner(i, spec, len(specs)),
                     idempotent=bool(spec.get("idempotent", True)),
                     rollback=self._undoer(i, spec) if spec.get("rollback", True) else None)
                for i, spec in enumerate(specs)]

    def _runner(self, index: int, spec: dict, count: int):
        def run(context: StepContext) -> dict:
            if spec.get("crash") == "before":
                self.crash_once(context, f"before {index + 1}")
            deadline = time.monotonic() + float(spec.get("seconds", 0))
            while True:
                context.check_stop()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.02))
                done = 1 - left / max(float(spec["seconds"]), 1e-9)
                context.progress(int(100 * (index + done) / count))
            if spec.get("journal", True):
                self.journal(context, f"run {index + 1}")
            if spec.get("fail"):
                raise VolumeCreationError(f"step {index + 1} failed as asked")
            if spec.get("crash") == "after":
                self.crash_once(context, f"after {index + 1}")
            return {f"step{index + 1}": "done"}
        return run

    def _undoer(self, index: int, spec: dict):
        def undo(context: StepContext) -> None:
            if spec.get("crashUndo"):
                self.crash_once(context, f"undo {index + 1}")
            if spec.get("failUndo"):
                raise CannotDeleteVolume(f"undo of step {index + 1} failed as asked")
            self.journal(context, f"undo {index + 1}")
        return undo


def _check_steps(steps: object) -> list[dict]:
    if not isinstance(steps, list) or not 0 < len(steps) <= MAX_STEPS:
        raise InvalidParameterException(f"steps: expected a list of 1 to {MAX_STEPS} structs")
    for spec in steps:
        if not isinstance(spec, dict) or not isinstance(spec.get("seconds", 0), (int, float)):
            raise InvalidParameterException(f"step {spec!r}: expected a struct with numeric seconds")
        if spec.get("crash", "") not in ("", "before", "after"):
            raise InvalidParameterException(f"step {spec!r}: crash is before or after")
    return steps


class DiagnosticsAPI:
    def __init__(self, manager: TaskManager, journal_dir: str) -> None:
        self._tasks = manager
        manager.register(SleepSteps(journal_dir).kind())

    @verb(mutating=True)
    def runTestTask(self, steps: list, options: dict | None = None) -> dict:
        opts = options_of(options)
        locks = opts.get("locks", [])
        if not isinstance(locks, list) or not all(isinstance(name, str) for name in locks):
            raise InvalidParameterException(f"locks={locks!r}: expected a list of names")
        args = {"steps": _check_steps(steps), "locks": locks}
        task = self._tasks.start(KIND, "runTestTask", args, tags=opts.get("tags", []), owner="diagnostics",
                                 task_id=opts.get("taskId"))
        return {"taskId": task.id}
