"""Tasks on a real hsmd: progress, stop/clear/revert/recover, limits and locks.

The tasks are runTestTask's sleeping steps (served with [tasks] diagnostics =
true); their journal shows what ran and what was undone.
"""

import json
import os
import time

import pytest

from hsm.tasks.store import JOURNAL, read_records
from tests.tasks_helpers import (
    diagnostics_config,
    fill,
    journal,
    small_filesystem,
    start_task,
    status,
    wait_state,
)
from tests.waiting import wait_for

# Larger than a page: once the small filesystem is full, no task record fits in the journal's last page.
PAD = "x" * 8192


@pytest.fixture
def daemon(make_hsmd):
    return make_hsmd(config=diagnostics_config()).start()


def test_steps_report_progress_and_finish(daemon):
    proxy = daemon.proxy()
    task_id = start_task(proxy, [{"seconds": 0.4}, {"seconds": 0.4}, {"seconds": 0.4}], tags=["image:a"])
    seen = set()

    def finished() -> dict | None:
        current = status(proxy, task_id)
        if current["state"] == "running":
            seen.add(current["stage"])
            assert -1 <= current["percentComplete"] <= 100
            assert current["taskState"] == "running" and current["taskResult"] == ""
        return current if current["state"] == "finished" else None

    current = wait_for(finished, what="the task's end")
    assert {"1/3", "2/3", "3/3"} <= seen
    assert current == {"taskID": task_id, "taskState": "finished", "taskResult": "success", "code": 0,
                       "message": "OK", "state": "finished", "stage": "3/3", "percentComplete": 100,
                       "verb": "runTestTask", "tags": ["image:a"]}
    info = proxy.getTaskInfo(task_id)["TaskInfo"]
    assert info["result"] == {"step1": "done", "step2": "done", "step3": "done"}
    assert journal(daemon, task_id) == ["run 1", "run 2", "run 3"]


def test_failed_step_rolls_back(daemon):
    proxy = daemon.proxy()
    task_id = start_task(proxy, [{"seconds": 0.1}, {"seconds": 0.1}, {"seconds": 0.1, "fail": True}])
    final = wait_state(proxy, task_id)
    assert (final["state"], final["taskState"], final["taskResult"]) == ("recovered", "finished", "cleanSuccess")
    assert final["code"] == 205
    assert "step 3 failed as asked" in final["message"]
    assert journal(daemon, task_id) == ["run 1", "run 2", "run 3", "undo 3", "undo 2", "undo 1"]


def test_stop_running_task_rolls_back(daemon):
    proxy = daemon.proxy()
    task_id = start_task(proxy, [{"seconds": 0.2}, {"seconds": 60}, {"seconds": 0.2}])
    wait_for(lambda: status(proxy, task_id)["stage"] == "2/3", what="step 2 running")
    assert proxy.stopTask(task_id)["status"]["code"] == 0
    final = wait_state(proxy, task_id)  # well before step 2's 60 s: the stop cut it short
    assert final["state"] == "recovered"
    assert final["code"] == 443
    assert journal(daemon, task_id) == ["run 1", "undo 2", "undo 1"]


def test_stop_queued_task_never_runs_it(make_hsmd):
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=1)).start()
    proxy = daemon.proxy()
    blocker = start_task(proxy, [{"seconds": 60}])  # holds the one worker until stopped
    queued = start_task(proxy, [{"seconds": 0.1}])
    assert status(proxy, queued)["state"] == "queued"
    assert proxy.stopTask(queued)["status"]["code"] == 0
    assert status(proxy, blocker)["state"] == "running"
    assert proxy.stopTask(blocker)["status"]["code"] == 0  # the worker then takes the stopped one
    assert wait_state(proxy, blocker)["state"] == "recovered"
    assert wait_state(proxy, queued)["state"] == "recovered"
    assert "run 1" not in journal(daemon, queued)


def test_wrong_state_and_unknown_ids(daemon):
    proxy = daemon.proxy()
    task_id = start_task(proxy, [{"seconds": 60}])  # unended until stopped
    assert proxy.clearTask(task_id)["status"]["code"] == 410
    assert proxy.recoverTask(task_id)["status"]["code"] == 410
    assert proxy.revertTask(task_id)["status"]["code"] == 410
    assert proxy.stopTask(task_id)["status"]["code"] == 0
    wait_state(proxy, task_id)
    assert proxy.stopTask(task_id)["status"]["code"] == 410
    assert proxy.getTaskStatus("no-such-task")["status"]["code"] == 401
    assert proxy.stopTask("no-such-task")["status"]["code"] == 401
    assert proxy.getTaskStatus("../etc/passwd")["status"]["code"] == 1000
    assert proxy.getTaskStatus("a.b")["status"]["code"] == 1000


def test_clear_forgets_a_finished_task(daemon):
    proxy = daemon.proxy()
    task_id = start_task(proxy, [{"seconds": 0}])
    wait_state(proxy, task_id)
    assert proxy.clearTask(task_id)["status"]["code"] == 0
    assert proxy.getTaskStatus(task_id)["status"]["code"] == 401
    assert task_id not in read_records(os.path.join(daemon.state_dir, "tasks"))[0]
    assert task_id not in proxy.getAllTasksStatuses()["allTasksStatus"]


@pytest.mark.parametrize("mode", ["non-transparent", "transparent"])
@pytest.mark.parametrize("steps, state", [
    ([{"seconds": 0}, {"seconds": 0}], "finished"),
    ([{"seconds": 0}, {"seconds": 0, "fail": True}], "recovered"),
    ([{"seconds": 0, "failUndo": True}, {"seconds": 0, "fail": True}], "failed"),
])
def test_revert_of_an_ended_task_is_refused(make_hsmd, mode, steps, state):
    """Only a task waiting in waitrecover rolls back: an ended one answers 410 and stays as it is."""
    daemon = make_hsmd(config=diagnostics_config(mode)).start()
    proxy = daemon.proxy()
    task_id = start_task(proxy, steps, taskId=f"ended-{state}")
    ended = wait_state(proxy, task_id)
    assert ended["state"] == state
    ran = journal(daemon, task_id)
    answer = proxy.revertTask(task_id)
    assert answer["status"]["code"] == 410
    assert f"is {state}: only a task in waitrecover can be reverted" in answer["status"]["message"]
    assert status(proxy, task_id) == ended
    assert journal(daemon, task_id) == ran
    assert task_id in read_records(os.path.join(daemon.state_dir, "tasks"))[0]


def test_ended_tasks_past_max_finished_are_forgotten_oldest_first(make_hsmd):
    """Non-transparent: the newest max_finished ended tasks stay, here and after a restart; unfinished ones stay."""
    daemon = make_hsmd(config=diagnostics_config(max_finished=5)).start()
    proxy = daemon.proxy()
    unfinished = start_task(proxy, [{"seconds": 60}])
    wait_state(proxy, unfinished, states=("running",))
    ended = []
    for steps in ([{"seconds": 0}], [{"seconds": 0, "fail": True}]) * 6:
        ended.append(start_task(proxy, steps))
        wait_state(proxy, ended[-1])
    assert [proxy.getTaskStatus(task_id)["status"]["code"] for task_id in ended] == [401] * 7 + [0] * 5
    assert [status(proxy, task_id)["state"] for task_id in ended[7:]] == ["recovered", "finished"] * 2 + ["recovered"]
    assert status(proxy, unfinished)["state"] == "running"
    tasks_dir = os.path.join(daemon.state_dir, "tasks")
    assert set(read_records(tasks_dir)[0]) == {unfinished, *ended[7:]}
    assert daemon.stop() == 0
    with open(daemon.config_path) as f:
        text = f.read()
    with open(daemon.config_path, "w") as f:
        f.write(text.replace("max_finished = 5", "max_finished = 3"))
    proxy = daemon.start().proxy()
    assert [proxy.getTaskStatus(task_id)["status"]["code"] for task_id in ended] == [401] * 9 + [0] * 3
    assert status(proxy, unfinished)["state"] in ("queued", "acquiring", "running")
    assert set(read_records(tasks_dir)[0]) == {unfinished, *ended[9:]}
    daemon.kill()


def test_ended_tasks_expire_by_age_with_no_call(make_hsmd):
    """hsmd forgets ended tasks past finished_ttl by itself, even when no verb comes to look."""
    daemon = make_hsmd(config=diagnostics_config(finished_ttl=1)).start()
    proxy = daemon.proxy()
    task_id = start_task(proxy, [{"seconds": 0}])
    wait_state(proxy, task_id)
    # hsmd forgets a task only once its removal is on disk, so the answer changes last: wait for it
    wait_for(lambda: proxy.getTaskStatus(task_id)["status"]["code"] == 401, timeout=10,
             what="the ended task to be forgotten")
    assert task_id not in read_records(os.path.join(daemon.state_dir, "tasks"))[0]


def test_transparent_tasks_are_not_bounded_by_max_finished(make_hsmd):
    """Transparent tasks belong to the caller: every ended one stays until clearTask."""
    daemon = make_hsmd(config=diagnostics_config("transparent", max_finished=2)).start()
    proxy = daemon.proxy()
    ids = [start_task(proxy, [{"seconds": 0}], taskId=f"engine-{i}") for i in range(5)]
    for task_id in ids:
        wait_state(proxy, task_id)
    start_task(proxy, [{"seconds": 0}], taskId="engine-last")
    assert [status(proxy, task_id)["state"] for task_id in ids] == ["finished"] * 5
    assert proxy.clearTask(ids[0])["status"]["code"] == 0


def test_full_queue_fails_at_once_with_405(make_hsmd):
    """Refused without waiting for room (its latency is bench/stalls.py's); room comes back as tasks end."""
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=1, max_tasks=3)).start()
    proxy = daemon.proxy()
    ids = [start_task(proxy, [{"seconds": 60}]) for _ in range(3)]  # no room until they are stopped
    begin = time.monotonic()
    answer = proxy.runTestTask([{"seconds": 0}], {})
    assert time.monotonic() - begin < 10  # well under the 60 s until a slot would free
    assert answer["status"]["code"] == 405
    for task_id in ids:
        assert proxy.stopTask(task_id)["status"]["code"] == 0
    for task_id in ids:
        assert wait_state(proxy, task_id)["state"] == "recovered"
    assert proxy.runTestTask([{"seconds": 0}], {})["status"]["code"] == 0


def test_five_hundred_queued_tasks(make_hsmd):
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=2, max_tasks=500)).start()
    proxy = daemon.proxy()
    # Two long tasks hold both workers until stopped, so the rest stays queued until all 500 are in.
    blockers = [start_task(proxy, [{"seconds": 600}]) for _ in range(2)]
    ids = [start_task(proxy, [{"seconds": 0}]) for _ in range(498)]
    states = [s["state"] for s in proxy.getAllTasksStatuses()["allTasksStatus"].values()]
    assert states.count("queued") >= 498  # the blockers may still be on their way to running
    assert proxy.runTestTask([{"seconds": 0}], {})["status"]["code"] == 405
    for task_id in blockers:
        assert proxy.stopTask(task_id)["status"]["code"] == 0

    def now() -> list[str]:
        return [s["state"] for s in proxy.getAllTasksStatuses()["allTasksStatus"].values()]

    wait_for(lambda: now().count("finished") == 498, timeout=120, what=lambda: f"498 finished: {sorted(now())}")
    assert all(journal(daemon, task_id) == ["run 1"] for task_id in ids)
    assert all(journal(daemon, task_id) == ["undo 1"] for task_id in blockers)
    stats = proxy.getStats()["stats"]
    assert stats["tasks"] == {"finished": 498, "recovered": 2}


def test_tasks_on_one_image_never_interleave(make_hsmd):
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=4)).start()
    proxy = daemon.proxy()
    # first holds img-1 for longer than the checks take even on a busy machine (a stop would roll it
    # back under a second taking of its locks, which is not what this test is about).
    first = start_task(proxy, [{"seconds": 5}], locks=["img-1"])
    wait_state(proxy, first, states=("running",))
    second = start_task(proxy, [{"seconds": 0.1}], locks=["img-1"])
    other = start_task(proxy, [{"seconds": 0.4}], locks=["img-2"])
    assert wait_state(proxy, other, states=("running", "finished"))
    now = proxy.getAllTasksStatuses()["allTasksStatus"]
    assert (now[first]["state"], now[second]["state"]) == ("running", "acquiring")
    assert wait_state(proxy, second)["state"] == "finished"
    first_done = proxy.getTaskInfo(first)["TaskInfo"]["updated"]
    second_info = proxy.getTaskInfo(second)["TaskInfo"]
    assert second_info["updated"] >= first_done


def test_task_lines_in_the_log(daemon):
    proxy = daemon.proxy()
    task_id = start_task(proxy, [{"seconds": 0}])
    wait_state(proxy, task_id)
    lines = [line for line in daemon.log_text().splitlines() if f"Task=`{task_id}`::" in line]
    assert any("running -> finished" in line for line in lines)


def test_capabilities_and_set_task_mode(daemon):
    proxy = daemon.proxy()
    assert proxy.getCapabilities()["info"]["taskMode"] == "non-transparent"
    assert proxy.setTaskMode("transparent") == {"status": {"code": 0, "message": "OK"}, "mode": "transparent"}
    assert proxy.getCapabilities()["info"]["taskMode"] == "transparent"
    assert proxy.setTaskMode("sometimes")["status"]["code"] == 1000
    assert proxy.runTestTask([{"seconds": 0}], {})["status"]["code"] == 5008
    task_id = start_task(proxy, [{"seconds": 0}], taskId="engine-task-1")
    assert task_id == "engine-task-1"
    assert proxy.runTestTask([{"seconds": 0}], {"taskId": "engine-task-1"})["status"]["code"] == 5007
    assert proxy.runTestTask([{"seconds": 0}], {"taskId": "bad/id"})["status"]["code"] == 1000


def _behind_a_blocker(proxy, steps: list[dict]) -> tuple[str, str]:
    """(blocker, task): a task of `steps` that waits for image img-cli, which a 600 s task holds until stopped."""
    blocker = start_task(proxy, [{"seconds": 600}], locks=["img-cli"])
    wait_state(proxy, blocker, states=("running",))
    return blocker, start_task(proxy, steps, locks=["img-cli"])


def test_cli_task_wait_plain_lines(daemon):
    import subprocess

    from tests.hsmd import HSM_CLI
    proxy = daemon.proxy()
    blocker, task_id = _behind_a_blocker(proxy, [{"seconds": 0.3}, {"seconds": 1}])
    process = subprocess.Popen([HSM_CLI, "--address", daemon.address, "task", "wait", task_id, "--interval", "0.05"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()  # hsm-cli watches: only now may the task run
    assert proxy.stopTask(blocker)["status"]["code"] == 0
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    lines = (first + rest).splitlines()
    assert lines[0].startswith("state=acquiring stage=")
    assert any(line.startswith("state=running stage=2/2 percent=") for line in lines)
    assert "\r" not in first + rest
    assert '"taskResult": "success"' in rest


def test_cli_task_wait_progress_bar_on_a_terminal(daemon):
    import os
    import pty
    import subprocess

    from tests.hsmd import HSM_CLI
    proxy = daemon.proxy()
    blocker, task_id = _behind_a_blocker(proxy, [{"seconds": 0.3}, {"seconds": 1, "fail": True}])
    leader, follower = pty.openpty()
    process = subprocess.Popen([HSM_CLI, "--address", daemon.address, "task", "wait", task_id,
                                "--interval", "0.05"], stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: hsm-cli is done
            break
        if not chunk:
            break
        if not output:  # hsm-cli watches: only now may the task run
            assert proxy.stopTask(blocker)["status"]["code"] == 0
        output += chunk
    os.close(leader)
    assert process.wait(30) == 1, "a rolled back task is not a success"
    text = output.decode()
    assert "\r[" in text and "stage 2/2 running" in text
    assert '"taskResult": "cleanSuccess"' in text


def test_failed_rollback_ends_failed(daemon):
    proxy = daemon.proxy()
    task_id = start_task(proxy, [{"seconds": 0, "failUndo": True}, {"seconds": 0, "fail": True}])
    final = wait_state(proxy, task_id)
    assert (final["state"], final["taskState"], final["taskResult"]) == ("failed", "finished", "cleanFailure")
    assert final["code"] == 205
    assert "rollback failed" in final["message"] and "undo of step 1 failed" in final["message"]
    assert journal(daemon, task_id) == ["run 1", "run 2", "undo 2"]


@pytest.mark.parametrize("steps, state", [
    ([{"seconds": 0}], "finished"),
    ([{"seconds": 0, "fail": True}], "recovered"),
    ([{"seconds": 0, "failUndo": True, "fail": True}], "failed"),
])
def test_verbs_in_ended_states(daemon, steps, state):
    proxy = daemon.proxy()
    task_id = start_task(proxy, steps)
    assert wait_state(proxy, task_id)["state"] == state
    assert proxy.stopTask(task_id)["status"]["code"] == 410
    assert proxy.recoverTask(task_id)["status"]["code"] == 410
    assert proxy.revertTask(task_id)["status"]["code"] == 410
    assert proxy.clearTask(task_id)["status"]["code"] == 0
    assert proxy.getTaskStatus(task_id)["status"]["code"] == 401


def test_verbs_while_queued(make_hsmd):
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=1)).start()
    proxy = daemon.proxy()
    blocker = start_task(proxy, [{"seconds": 600}])  # holds the one worker until stopped
    queued = start_task(proxy, [{"seconds": 0}])
    assert status(proxy, queued)["state"] == "queued"
    for verb in (proxy.clearTask, proxy.revertTask, proxy.recoverTask):
        assert verb(queued)["status"]["code"] == 410
    assert status(proxy, queued)["state"] == "queued"
    assert proxy.stopTask(blocker)["status"]["code"] == 0
    assert wait_state(proxy, queued)["state"] == "finished"


def test_a_full_task_journal_ends_tasks_failed_and_hsmd_carries_on(make_hsmd):
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=2, max_tasks=2))
    tasks_dir = os.path.join(daemon.state_dir, "tasks")
    with small_filesystem(tasks_dir):
        daemon.start()
        proxy = daemon.proxy()
        endless = [{"seconds": 0.2, "pad": PAD}] + [{"seconds": 0.2}] * 99  # ends only when its journal fails it
        ids = [start_task(proxy, endless, locks=[f"img-{i}"]) for i in range(2)]
        for task_id in ids:
            wait_state(proxy, task_id, states=("running",))
        assert proxy.runTestTask([{"seconds": 0}], {})["status"]["code"] == 405
        filler = fill(tasks_dir)
        for task_id in ids:
            final = wait_state(proxy, task_id)
            assert (final["state"], final["taskState"], final["taskResult"], final["code"]) == \
                ("failed", "finished", "cleanFailure", 407)
            assert "No space left on device" in final["message"]
        # Both slots are free again: a new task is refused for want of journal space (407), not of room (405).
        assert proxy.runTestTask([{"seconds": 0, "pad": PAD}], {})["status"]["code"] == 407
        assert proxy.getStats()["stats"]["tasks"] == {"failed": 2}
        os.unlink(filler)
        # Space is back: new tasks on the same images (their locks were freed) run and are written.
        again = [start_task(proxy, [{"seconds": 0, "pad": PAD}], locks=[f"img-{i}"]) for i in range(2)]
        for task_id in again:
            assert wait_state(proxy, task_id)["state"] == "finished"
        with open(os.path.join(tasks_dir, JOURNAL)) as f:
            assert all(json.loads(line) for line in f.read().splitlines())  # no torn line between records
        records = read_records(tasks_dir)[0]
        assert [records[task_id]["state"] for task_id in ids + again] == ["failed"] * 2 + ["finished"] * 2
        assert proxy.clearTask(ids[0])["status"]["code"] == 0
        assert daemon.stop() == 0
        daemon.start()
        proxy = daemon.proxy()
        assert proxy.getTaskStatus(ids[0])["status"]["code"] == 401
        assert (status(proxy, ids[1])["state"], status(proxy, ids[1])["code"]) == ("failed", 407)
        assert [status(proxy, task_id)["state"] for task_id in again] == ["finished"] * 2
        assert "torn line" not in daemon.log_text()
        daemon.kill()
