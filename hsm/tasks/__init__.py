"""The two-mode task manager: persisted, recoverable tasks made of steps.

Importable on its own (VDSM uses it too): it needs only the standard library
and hsm's leaf modules (errors, atomicfile, logctx).
"""

from hsm.tasks.manager import TaskManager
from hsm.tasks.resources import EXCLUSIVE, SHARED, ResourceManager
from hsm.tasks.states import State
from hsm.tasks.task import Step, StepContext, Task, TaskKind

__all__ = ["EXCLUSIVE", "SHARED", "ResourceManager", "State", "Step", "StepContext", "Task", "TaskKind",
           "TaskManager"]
