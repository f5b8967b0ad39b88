"""hsm.tasks as a library: importable alone (VDSM imports it), states, resource locks, a full journal."""

import os
import subprocess
import sys
import threading

import pytest

from hsm.errors import AddTaskError, ResourceTimeout, TaskMetaDataSaveError, UnknownTask, VolumeCreationError
from hsm.tasks import EXCLUSIVE, SHARED, ResourceManager, State, Step, Task, TaskKind, TaskManager
from hsm.tasks.states import engine_result, engine_state
from hsm.tasks.store import TaskStore, read_records
from tests.tasks_helpers import fill, small_filesystem
from tests.waiting import FakeClock, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Larger than a page: once the small filesystem is full, no task record fits in the journal's last page.
PAD = "x" * 8192

ALONE = r"""
import sys, importlib.abc, tempfile

class Refuse(importlib.abc.MetaPathFinder):
    # hsmd's other parts and its third-party libraries must not be needed.
    BLOCKED = ("prometheus_client", "pyudev", "pyinotify", "hsm.rpc", "hsm.api", "hsm.daemon",
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
from tests.waiting import wait_for
wait_for(lambda: task.state.done, timeout=60, what="the task's end")
print(task.state.value, ran, sorted(m for m in sys.modules if m.startswith("hsm")))
"""


def test_imports_and_runs_without_the_rest_of_hsmd():
    done = subprocess.run([sys.executable, "-c", ALONE], capture_output=True, text=True, timeout=90, cwd=ROOT)
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
        wait_for(lambda: _users(resources, "a") == 2 or "writer" in order, what="the writer waiting")
        order.append("reader done")
    thread.join()
    assert order == ["two readers", "reader done", "writer"]
    assert resources.holders() == {}


def _users(resources: ResourceManager, image: str) -> int:
    """Holders and waiters of the image's lock: how a test knows that a thread it started now waits."""
    with resources._cond:
        entry = resources._resources.get(("01_image", image))
        return entry.users if entry else 0


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
                assert release_first.wait(30)

    def writer():
        with resources.locked([("01_image", "c", EXCLUSIVE)], timeout=5):
            got.append("writer")

    t1 = threading.Thread(target=reader, args=("reader1", True))
    t1.start()
    assert first_reader.wait(30)
    tw = threading.Thread(target=writer)
    tw.start()
    wait_for(lambda: _users(resources, "c") == 2 or "writer" in got, what="the writer waiting")
    t2 = threading.Thread(target=reader, args=("reader2", False))
    t2.start()
    wait_for(lambda: _users(resources, "c") == 3 or "reader2" in got, what="the second reader waiting or in")
    release_first.set()
    for t in (t1, tw, t2):
        t.join(30)
    assert got == ["reader1", "writer", "reader2"]


@pytest.fixture
def small_fs(tmp_path):
    with small_filesystem(str(tmp_path / "small")) as path:
        yield path


class Gated:
    """A kind of two steps on image `img`; the first waits for `gate`, then `after_first` runs."""

    def __init__(self, idempotent: bool = True) -> None:
        self.entered, self.gate, self.undone = threading.Event(), threading.Event(), []
        self.idempotent = idempotent

    def kind(self) -> TaskKind:
        return TaskKind("gated", lambda args: [
            Step("wait", self._wait, idempotent=self.idempotent, rollback=lambda ctx: self.undone.append(1)),
            Step("end", lambda ctx: None, rollback=lambda ctx: self.undone.append(2)),
        ], resources=lambda args: [("01_image", "img", EXCLUSIVE)])

    def _wait(self, ctx) -> None:
        self.entered.set()
        assert self.gate.wait(30)


def _manager(folder: str, kind: TaskKind, **options) -> TaskManager:
    manager = TaskManager(folder, **options)
    manager.register(kind)
    return manager


def test_a_task_whose_state_cannot_be_written_ends_failed_and_frees_its_slot(small_fs):
    gated = Gated()
    manager = _manager(small_fs, gated.kind(), pool_size=2, max_tasks=1, lock_timeout=5)
    task = manager.start("gated", "v", {"pad": PAD})
    assert gated.entered.wait(30)
    with pytest.raises(AddTaskError):
        manager.start("gated", "v", {"pad": PAD})
    filler = fill(small_fs)
    gated.gate.set()  # the first step ends; its end cannot be written
    wait_for(lambda: task.state.done, what="the task's end")
    assert (task.state, task.code) == (State.FAILED, 407)
    assert "No space left on device" in task.message and "stopped running at step 1/2" in task.message
    assert gated.undone == [], "a rollback that cannot be recorded is not started"
    assert manager.has_room() and manager.resources.holders() == {}
    assert read_records(small_fs)[0][task.id]["state"] == "queued"  # on disk: the last state written
    with pytest.raises(TaskMetaDataSaveError):  # 407: there is a slot, but no room in the journal
        manager.start("gated", "v", {"pad": PAD})
    os.unlink(filler)
    again = manager.start("gated", "v", {"pad": PAD})
    wait_for(lambda: again.state.done, what="the next task's end")
    assert again.state is State.FINISHED
    records = read_records(small_fs)[0]
    assert (records[task.id]["state"], records[task.id]["code"]) == ("failed", 407)  # written with the next
    manager.shutdown(10)
    restarted = _manager(small_fs, Gated().kind())
    assert restarted.recover_all() == {"kept": 2}
    assert restarted.get(task.id).state is State.FAILED
    restarted.shutdown(10)


def test_a_rollback_that_cannot_be_recorded_stops_there(small_fs):
    undone = []

    def undo_and_fill(ctx) -> None:
        undone.append(2)
        fill(small_fs)

    def fail(ctx) -> None:
        raise VolumeCreationError("as asked")

    kind = TaskKind("failing", lambda args: [Step("one", lambda ctx: None, rollback=lambda ctx: undone.append(1)),
                                             Step("two", fail, rollback=undo_and_fill)])
    manager = _manager(small_fs, kind, pool_size=1, max_tasks=1, mode="transparent")
    task = manager.start("failing", "v", {"pad": PAD}, task_id="engine-1")
    wait_for(lambda: task.state.done, what="the task's end")
    assert (task.state, task.code, undone) == (State.FAILED, 407, [2])
    assert "stopped recovering at step 2/2" in task.message and "as asked" in task.message
    assert manager.has_room()
    manager.shutdown(10)


def test_start_up_on_a_full_disk_leaves_interrupted_tasks_waiting(small_fs):
    cut = Task(id="cut", kind="gated", verb="v", args={"pad": PAD}, mode="non-transparent", state=State.RUNNING,
               nsteps=2)
    store = TaskStore(small_fs)
    store.save(cut)
    store.load_all()  # the journal is folded into the snapshot: its next line needs a fresh page
    filler = fill(small_fs)
    gated = Gated(idempotent=False)  # cut inside a step that cannot run again: it must roll back
    manager = _manager(small_fs, gated.kind())
    assert manager.recover_all() == {"waiting": 1}
    waiting = manager.get("cut")
    assert waiting.state is State.WAITRECOVER and not waiting.resumable
    assert "not recovered at start-up" in waiting.message
    os.unlink(filler)
    manager.revert("cut")
    wait_for(lambda: waiting.state.done, what="the rollback's end")
    assert waiting.state is State.RECOVERED and gated.undone == [1]
    assert read_records(small_fs)[0]["cut"]["state"] == "recovered"
    manager.shutdown(10)


def test_ended_tasks_wait_to_be_forgotten_until_the_journal_takes_it(small_fs):
    clock = FakeClock()
    gated = Gated()
    gated.gate.set()
    manager = _manager(small_fs, gated.kind(), clock=clock)
    task = manager.start("gated", "v", {"pad": PAD})
    wait_for(lambda: task.state.done, what="the task's end")
    manager.shutdown(10)
    manager = _manager(small_fs, gated.kind(), finished_ttl=60, clock=clock)
    manager.recover_all()  # folds the journal: a removal then needs a fresh page
    filler = fill(small_fs)
    clock.advance(61)
    assert [t.id for t in manager.all()] == [task.id]  # kept, and the verb still answers
    os.unlink(filler)
    assert manager.all() == []
    assert read_records(small_fs)[0] == {}
    manager.shutdown(10)


def test_ended_tasks_are_forgotten_past_finished_ttl(tmp_path):
    """Non-transparent: an ended task answers until finished_ttl has passed since its end, then is gone, on disk too."""
    clock = FakeClock()
    gated = Gated()
    gated.gate.set()
    manager = _manager(str(tmp_path), gated.kind(), finished_ttl=60, clock=clock)
    task = manager.start("gated", "v", {})
    wait_for(lambda: task.state.done, what="the task's end")
    clock.advance(60)
    assert manager.get(task.id) is task
    clock.advance(0.5)
    with pytest.raises(UnknownTask):
        manager.get(task.id)
    assert read_records(str(tmp_path))[0] == {}
    manager.shutdown(10)


def test_transparent_ended_tasks_outlive_finished_ttl(tmp_path):
    """Transparent tasks are the caller's: finished_ttl never forgets them, here or after a restart; clear does."""
    clock = FakeClock()
    gated = Gated()
    gated.gate.set()
    manager = _manager(str(tmp_path), gated.kind(), mode="transparent", finished_ttl=60, clock=clock)
    task = manager.start("gated", "v", {}, task_id="engine-1")
    wait_for(lambda: task.state.done, what="the task's end")
    clock.advance(3600)
    manager.expire()
    assert manager.get("engine-1") is task
    manager.shutdown(10)
    restarted = _manager(str(tmp_path), gated.kind(), mode="transparent", finished_ttl=60, clock=clock)
    assert restarted.recover_all() == {"kept": 1}
    clock.advance(3600)
    restarted.expire()
    assert restarted.get("engine-1").state is State.FINISHED
    restarted.clear("engine-1")
    with pytest.raises(UnknownTask):
        restarted.get("engine-1")
    restarted.shutdown(10)
