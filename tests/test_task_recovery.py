"""kill -9 of hsmd at every step boundary, in both task modes, then a restart.

runTestTask's crash points SIGKILL hsmd at an exact place (before or after a
step's work, or inside a rollback), once; the journal shows what really ran.
"""

import signal
import uuid
import xml.parsers.expat
import xmlrpc.client

import pytest

from tests.tasks_helpers import diagnostics_config, journal, start_task, status, wait_state
from tests.waiting import wait_for

STEPS = 3


def _steps(crash_at: int, where: str, idempotent: bool = True) -> list[dict]:
    steps = [{"seconds": 0.05, "idempotent": idempotent} for _ in range(STEPS)]
    steps[crash_at - 1]["crash"] = where
    return steps


def _crash_and_restart(daemon, steps, **options):
    """Start a task that kills hsmd, then restart hsmd.

    The kill may come before the answer leaves hsmd, as for any client whose
    reply is lost: the task id is chosen here, so the test knows it anyway.
    """
    options.setdefault("taskId", f"crash-{uuid.uuid4()}")
    try:
        assert start_task(daemon.proxy(), steps, **options) == options["taskId"]
    except (xml.parsers.expat.ExpatError, OSError, xmlrpc.client.ProtocolError):
        pass
    task_id = options["taskId"]
    assert daemon.process.wait(30) == -signal.SIGKILL
    daemon.close_proxies()
    daemon.start()
    return task_id, daemon.proxy()


@pytest.fixture
def plain(make_hsmd):
    return make_hsmd(config=diagnostics_config("non-transparent")).start()


@pytest.fixture
def transparent(make_hsmd):
    return make_hsmd(config=diagnostics_config("transparent", finished_ttl=1)).start()


@pytest.mark.parametrize("crash_at", range(1, STEPS + 1))
def test_non_transparent_resumes_at_the_boundary(plain, crash_at):
    """Killed between two steps: the next start runs on from the step that had not begun."""
    task_id, proxy = _crash_and_restart(plain, _steps(crash_at, "before", idempotent=True))
    final = wait_state(proxy, task_id)
    assert final["state"] == "finished"
    assert journal(plain, task_id) == [f"run {i}" for i in range(1, STEPS + 1)]


@pytest.mark.parametrize("crash_at", range(1, STEPS + 1))
def test_non_transparent_boundary_before_a_step_that_cannot_rerun(plain, crash_at):
    """hsmd cannot tell whether a step that may not run twice had begun: it rolls back, from that step."""
    task_id, proxy = _crash_and_restart(plain, _steps(crash_at, "before", idempotent=False))
    final = wait_state(proxy, task_id)
    assert (final["state"], final["taskResult"]) == ("recovered", "cleanSuccess")
    assert journal(plain, task_id) == ([f"run {i}" for i in range(1, crash_at)]
                                       + [f"undo {i}" for i in range(crash_at, 0, -1)])


@pytest.mark.parametrize("crash_at", range(1, STEPS + 1))
def test_non_transparent_reruns_an_idempotent_step(plain, crash_at):
    """Killed after a step's work, before it was recorded: an idempotent step runs again."""
    task_id, proxy = _crash_and_restart(plain, _steps(crash_at, "after", idempotent=True))
    assert wait_state(proxy, task_id)["state"] == "finished"
    expected = [f"run {i}" for i in range(1, crash_at + 1)] + [f"run {i}" for i in range(crash_at, STEPS + 1)]
    assert journal(plain, task_id) == expected


@pytest.mark.parametrize("crash_at", range(1, STEPS + 1))
def test_non_transparent_rolls_back_a_step_that_cannot_rerun(plain, crash_at):
    task_id, proxy = _crash_and_restart(plain, _steps(crash_at, "after", idempotent=False))
    final = wait_state(proxy, task_id)
    assert (final["state"], final["taskResult"]) == ("recovered", "cleanSuccess")
    assert f"step {crash_at}/{STEPS}" in final["message"]
    assert journal(plain, task_id) == ([f"run {i}" for i in range(1, crash_at + 1)]
                                       + [f"undo {i}" for i in range(crash_at, 0, -1)])


def test_non_transparent_finishes_an_interrupted_rollback(plain):
    steps = [{"seconds": 0, "crashUndo": True}, {"seconds": 0}, {"seconds": 0, "fail": True}]
    task_id, proxy = _crash_and_restart(plain, steps)
    final = wait_state(proxy, task_id)
    assert final["state"] == "recovered"
    assert final["code"] == 205
    assert journal(plain, task_id) == ["run 1", "run 2", "run 3", "undo 3", "undo 2", "undo 1"]


def test_non_transparent_keeps_finished_tasks_across_restart(plain):
    proxy = plain.proxy()
    task_id = start_task(proxy, [{"seconds": 0}])
    wait_state(proxy, task_id)
    assert plain.stop() == 0
    plain.start()
    assert status(plain.proxy(), task_id)["state"] == "finished"


@pytest.mark.parametrize("crash_at", range(1, STEPS + 1))
@pytest.mark.parametrize("where", ["before", "after"])
def test_transparent_waits_then_recovers(transparent, crash_at, where):
    task_id, proxy = _crash_and_restart(transparent, _steps(crash_at, where, idempotent=True),
                                        taskId=f"engine-{crash_at}-{where}")
    waiting = status(proxy, task_id)
    assert (waiting["state"], waiting["taskState"], waiting["taskResult"]) == ("waitrecover", "cleaning", "")
    ran = journal(transparent, task_id)
    # hsmd's start-up decision for its tasks, made before it answered: this one is left waiting.
    decided = [line for line in transparent.log_text().splitlines() if "Recovered tasks:" in line]
    assert decided[-1].endswith("Recovered tasks: {'waiting': 1}"), decided
    assert status(proxy, task_id)["state"] == "waitrecover"
    assert journal(transparent, task_id) == ran, "hsmd must not act alone in transparent mode"
    assert proxy.recoverTask(task_id)["status"]["code"] == 0
    assert wait_state(proxy, task_id)["state"] == "finished"
    runs = journal(transparent, task_id)
    assert runs[-1] == f"run {STEPS}"
    assert sorted(set(runs)) == [f"run {i}" for i in range(1, STEPS + 1)]


@pytest.mark.parametrize("crash_at", range(1, STEPS + 1))
def test_transparent_revert_rolls_back(transparent, crash_at):
    task_id, proxy = _crash_and_restart(transparent, _steps(crash_at, "after", idempotent=False),
                                        taskId=f"engine-revert-{crash_at}")
    assert status(proxy, task_id)["state"] == "waitrecover"
    answer = proxy.recoverTask(task_id)
    assert answer["status"]["code"] == 410, "a step that cannot run again is not resumed"
    assert "revertTask" in answer["status"]["message"]
    assert proxy.revertTask(task_id)["status"]["code"] == 0
    final = wait_state(proxy, task_id)
    assert (final["state"], final["taskResult"]) == ("recovered", "cleanSuccess")
    assert journal(transparent, task_id) == ([f"run {i}" for i in range(1, crash_at + 1)]
                                             + [f"undo {i}" for i in range(crash_at, 0, -1)])


def test_transparent_interrupted_rollback_waits_then_continues(transparent):
    steps = [{"seconds": 0, "crashUndo": True}, {"seconds": 0, "fail": True}]
    task_id, proxy = _crash_and_restart(transparent, steps, taskId="engine-undo")
    assert status(proxy, task_id)["state"] == "waitrecover"
    assert journal(transparent, task_id) == ["run 1", "run 2", "undo 2"]
    assert proxy.recoverTask(task_id)["status"]["code"] == 0
    assert wait_state(proxy, task_id)["state"] == "recovered"
    assert journal(transparent, task_id) == ["run 1", "run 2", "undo 2", "undo 1"]


def test_transparent_finished_tasks_stay_until_cleared(transparent):
    proxy = transparent.proxy()
    task_id = start_task(proxy, [{"seconds": 0}], taskId="engine-done")
    wait_state(proxy, task_id)
    assert transparent.stop() == 0
    transparent.start()
    proxy = transparent.proxy()
    # finished_ttl (1 s) applies to non-transparent tasks only: once one that ended later has been
    # forgotten by age, the transparent one has outlived the TTL too.
    assert proxy.setTaskMode("non-transparent")["status"]["code"] == 0
    later = start_task(proxy, [{"seconds": 0}])
    wait_state(proxy, later)
    wait_for(lambda: proxy.getTaskStatus(later)["status"]["code"] == 401, what="the later task forgotten by age")
    assert status(proxy, task_id)["state"] == "finished"
    assert proxy.clearTask(task_id)["status"]["code"] == 0
    assert proxy.getTaskStatus(task_id)["status"]["code"] == 401


def test_sigterm_leaves_running_task_for_the_next_start(plain):
    proxy = plain.proxy()
    task_id = start_task(proxy, [{"seconds": 0.1}, {"seconds": 5}, {"seconds": 0.1}])
    wait_for(lambda: status(proxy, task_id)["stage"] == "2/3", what="step 2 running")
    assert plain.stop() == 0
    assert journal(plain, task_id) == ["run 1"], "hsmd should not wait for the step to end"
    plain.start()
    assert wait_state(plain.proxy(), task_id)["state"] == "finished"
    assert journal(plain, task_id) == ["run 1", "run 2", "run 3"]


def test_transparent_verbs_while_waiting(transparent):
    task_id, proxy = _crash_and_restart(transparent, _steps(2, "before"), taskId="engine-waiting")
    assert status(proxy, task_id)["state"] == "waitrecover"
    assert proxy.stopTask(task_id)["status"]["code"] == 410
    assert proxy.clearTask(task_id)["status"]["code"] == 410
    assert proxy.getAllTasksStatuses()["allTasksStatus"][task_id]["taskState"] == "cleaning"
    assert proxy.recoverTask(task_id)["status"]["code"] == 0
    assert wait_state(proxy, task_id)["state"] == "finished"
    assert proxy.recoverTask(task_id)["status"]["code"] == 410
