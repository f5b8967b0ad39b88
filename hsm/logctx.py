"""Which task a log line is written in, for VDSM-style `Task=`id`::` prefixes.

Stdlib only, so that hsm.tasks (which VDSM imports on its own) can use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

_current_task: contextvars.ContextVar[str] = contextvars.ContextVar("hsm_task_id", default="")

# VDSM's line layout: thread, level, time, module, line, logger, function.
LINE_FORMAT = ("%(threadName)s::%(levelname)s::%(asctime)s::%(module)s::%(lineno)d::"
               "%(name)s::(%(funcName)s) %(task)s%(message)s")


@contextlib.contextmanager
def task_context(task_id: str) -> Iterator[None]:
    """Lines logged inside this block carry the task id."""
    token = _current_task.set(task_id)
    try:
        yield
    finally:
        _current_task.reset(token)


def current_task() -> str:
    return _current_task.get()


class TaskFilter(logging.Filter):
    """Adds `task` to every record: "Task=`id`::" inside a task, "" elsewhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        task_id = _current_task.get()
        record.task = f"Task=`{task_id}`::" if task_id else ""
        return True
