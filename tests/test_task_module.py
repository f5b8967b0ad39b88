"""hsm.tasks as a library: importable alone (VDSM imports it), states, and resource locks."""

import subprocess
import sys
import threading
import time

import pytest

from hsm.errors import ResourceTimeout
from hsm.tasks import EXCLUSIVE, SHARED, ResourceManager, State
from hsm.tasks.states import engine_result, engine_state

ALONE = r"""
import sys, importlib.abc, tempfile, time

class Refuse(importlib.abc.MetaPathFinder):
    # hsmd's other parts and its third-party libraries must not be needed.
    BLOCKED = ("cheroot", "prometheus_client", "pyudev", "pyinotify", "hsm.rpc", "hsm.api", "hsm.daemon",
               "hsm.config", "hsm.cli", "supervdsm")
    def find_spec(self, name, path=None, target=None):
        if name.startswith(self.BLOCKED):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Refuse())
from hsm.tasks import Step, TaskKind, TaskManager

ran = []
manager = TaskManager(tempfile.mkdtemp(), pool_size=1)
manager.register(TaskKind("hello", lambda args: [Step("greet", lambda ctx: ran.append(ctx.args["who"]))]))
task = manager.start("hello", "greet", {"who": "vdsm"})
for _ in range(500):
    if task.state.done:
        break
    time.sleep(0.01)
print(task.state.value, ran, sorted(m for m in sys.modules if m.startswith("hsm")))
"""


def test_imports_and_runs_without_the_rest_of_hsmd():
    done = subprocess.run([sys.executable, "-c", ALONE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    state, rest = done.stdout.split(" ", 1)
    assert state == "finished"
    assert rest.startswith("['vdsm']")


@pytest.mark.parametrize("state, task_state, task_result", [
    ("init", "init", ""), ("preparing", "running", ""), ("blocked", "running", ""),
    ("acquiring", "running", ""), ("queued", "running", ""), ("running", "running", ""),
    ("finished", "finished", "success"), ("aborting", "aborting", ""), ("waitrecover", "cleaning", ""),
    ("racquiring", "cleaning", ""), ("recovering", "cleaning", ""), ("raborting", "aborting", ""),
    ("recovered", "finished", "cleanSuccess"), ("failed", "finished", "cleanFailure"),
    ("unknown", "unknown", ""),
])
def test_engine_view_of_every_state(state, task_state, task_result):
    assert engine_state(State(state)) == task_state
    assert engine_result(State(state)) == task_result


def test_fifteen_states():
    assert len(State) == 15


def test_shared_locks_coexist_and_exclusive_waits():
    resources = ResourceManager()
    order = []
    with resources.locked([("01_image", "a", SHARED)], timeout=1):
        with resources.locked([("01_image", "a", SHARED)], timeout=1):
            order.append("two readers")

        def writer():
            with resources.locked([("01_image", "a", EXCLUSIVE)], timeout=5):
                order.append("writer")

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.2)
        order.append("reader done")
    thread.join()
    assert order == ["two readers", "reader done", "writer"]
    assert resources.holders() == {}


def test_lock_timeout_is_resource_timeout_and_releases_what_it_took():
    resources = ResourceManager()
    with resources.locked([("01_image", "b", EXCLUSIVE)], timeout=1):
        with pytest.raises(ResourceTimeout) as info:
            with resources.locked([("00_repository", "r", SHARED), ("01_image", "b", SHARED)], timeout=0.2):
                pass
        assert info.value.code == 851
        assert "00_repository/r" not in resources.holders()
    assert resources.holders() == {}


def test_locks_are_taken_in_one_order():
    """Two tasks asking for the same two images in opposite orders do not deadlock."""
    resources = ResourceManager()
    done = []

    def task(names):
        for _ in range(200):
            with resources.locked([("01_image", n, EXCLUSIVE) for n in names], timeout=5):
                pass
        done.append(names)

    threads = [threading.Thread(target=task, args=(names,)) for names in (["x", "y"], ["y", "x"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(done) == 2


def test_waiting_writer_is_not_starved_by_new_readers():
    resources = ResourceManager()
    got = []
    first_reader = threading.Event()
    release_first = threading.Event()

    def reader(name, hold):
        with resources.locked([("01_image", "c", SHARED)], timeout=5):
            got.append(name)
            if hold:
                first_reader.set()
                release_first.wait(5)

    def writer():
        with resources.locked([("01_image", "c", EXCLUSIVE)], timeout=5):
            got.append("writer")

    t1 = threading.Thread(target=reader, args=("reader1", True))
    t1.start()
    first_reader.wait(5)
    tw = threading.Thread(target=writer)
    tw.start()
    time.sleep(0.1)
    t2 = threading.Thread(target=reader, args=("reader2", False))
    t2.start()
    time.sleep(0.1)
    release_first.set()
    for t in (t1, tw, t2):
        t.join(10)
    assert got == ["reader1", "writer", "reader2"]
