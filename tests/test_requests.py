"""options.requestId: the idempotency plumbing every mutating verb goes through.

Most tests drive hsm.api's Dispatcher in-process with a small verb group made
here; the records are real files under a real state folder. What hsmd does
with damaged records at start-up is tested on a real hsmd.
"""

import hashlib
import json
import os
import threading
import time

import pytest

from hsm.api.dispatch import Dispatcher
from hsm.api.requests import RequestLog
from hsm.api.verbs import require_str, verb
from hsm.errors import InvalidParameterException
from tests.waiting import FakeClock, wait_for


class Shelf:
    """A toy mutating verb group: counts how often its verbs really ran; createThing waits for `gate`."""

    def __init__(self):
        self.created = []
        self.gate = threading.Event()
        self.gate.set()

    @verb(mutating=True)
    def createThing(self, name, options=None):
        require_str("name", name)
        assert self.gate.wait(30)
        self.created.append(name)
        return {"thingId": f"{name}-{len(self.created)}"}

    @verb()
    def countThings(self, options=None):
        return {"count": len(self.created)}


def _dispatcher(folder, ttl=3600, clock=time.time):
    shelf = Shelf()
    return shelf, Dispatcher([shelf], RequestLog(str(folder), ttl=ttl, clock=clock))


def test_repeat_answers_first_and_does_nothing(tmp_path):
    shelf, d = _dispatcher(tmp_path)
    first = d.call("createThing", ["a", {"requestId": "r1"}])
    again = d.call("createThing", ["a", {"requestId": "r1"}])
    assert first == again == {"status": {"code": 0, "message": "OK"}, "thingId": "a-1"}
    assert shelf.created == ["a"]


def test_same_request_id_other_arguments_is_refused(tmp_path):
    shelf, d = _dispatcher(tmp_path)
    d.call("createThing", ["a", {"requestId": "r1"}])
    answer = d.call("createThing", ["b", {"requestId": "r1"}])
    assert answer["status"]["code"] == 5000
    assert "r1" in answer["status"]["message"]
    assert shelf.created == ["a"]


def test_answers_survive_a_restart(tmp_path):
    _, d = _dispatcher(tmp_path)
    first = d.call("createThing", ["a", {"requestId": "r1"}])
    shelf, restarted = _dispatcher(tmp_path)
    assert restarted.call("createThing", ["a", {"requestId": "r1"}]) == first
    assert shelf.created == []


def test_failures_leave_the_request_id_free(tmp_path):
    shelf, d = _dispatcher(tmp_path)
    failed = d.call("createThing", ["", {"requestId": "r1"}])
    assert failed["status"]["code"] == InvalidParameterException.code
    assert d.call("createThing", ["a", {"requestId": "r1"}])["thingId"] == "a-1"


def test_concurrent_repeats_run_once(tmp_path):
    shelf, d = _dispatcher(tmp_path)
    shelf.gate.clear()  # the first call stays inside createThing until the seven others wait on its requestId
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(d.call("createThing", ["a", {"requestId": "r"}])))
               for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: "r" in d.requests._busy and d.requests._busy["r"][1] == 8, what="eight callers of one requestId")
    shelf.gate.set()
    for t in threads:
        t.join(30)
    assert shelf.created == ["a"]
    assert len(answers) == 8 and all(a == answers[0] for a in answers)


def test_expired_answers_are_forgotten(tmp_path):
    clock = FakeClock()
    shelf, d = _dispatcher(tmp_path, ttl=60, clock=clock)
    first = d.call("createThing", ["a", {"requestId": "r1"}])
    clock.advance(60)
    assert d.requests.expire() == 0
    assert d.call("createThing", ["a", {"requestId": "r1"}]) == first  # at the TTL: still answered
    clock.advance(0.001)
    assert d.requests.expire() == 1
    assert list(tmp_path.iterdir()) == []
    assert d.call("createThing", ["a", {"requestId": "r1"}])["thingId"] == "a-2"


def test_an_expired_answer_is_not_given_before_the_sweep(tmp_path):
    """Past the TTL the call runs again, even when no expire() came yet."""
    clock = FakeClock()
    shelf, d = _dispatcher(tmp_path, ttl=60, clock=clock)
    d.call("createThing", ["a", {"requestId": "r1"}])
    clock.advance(61)
    assert d.call("createThing", ["a", {"requestId": "r1"}])["thingId"] == "a-2"
    assert list(d.requests._answers) == ["r1"] and len(list(tmp_path.iterdir())) == 1


def test_expired_answers_go_as_new_ones_come(tmp_path):
    """No expire() call: a new record drops the expired ones, from memory and disk."""
    clock = FakeClock()
    shelf, d = _dispatcher(tmp_path, ttl=60, clock=clock)
    d.call("createThing", ["a", {"requestId": "r1"}])
    clock.advance(61)
    d.call("createThing", ["b", {"requestId": "r2"}])
    assert list(d.requests._answers) == ["r2"]
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(_record_path(tmp_path, "r2"))]


def test_answers_past_the_count_go_oldest_first(tmp_path):
    shelf = Shelf()
    d = Dispatcher([shelf], RequestLog(str(tmp_path), ttl=3600, max_answers=3))
    first = [d.call("createThing", [f"t{i}", {"requestId": f"r{i}"}]) for i in range(5)]
    assert list(d.requests._answers) == ["r2", "r3", "r4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        os.path.basename(_record_path(tmp_path, f"r{i}")) for i in (2, 3, 4))
    assert d.call("createThing", ["t4", {"requestId": "r4"}]) == first[4]
    assert len(shelf.created) == 5
    restarted = RequestLog(str(tmp_path), ttl=3600, max_answers=2)  # a smaller limit at the next start
    assert list(restarted._answers) == ["r3", "r4"]
    assert len(list(tmp_path.iterdir())) == 2


def test_hsmd_expires_answers_by_age_while_it_runs(make_hsmd):
    """With no further call, an answer older than request_id_ttl leaves hsmd's memory and disk."""
    daemon = make_hsmd(config={"rpc": {"request_id_ttl": 1}, "tasks": {"diagnostics": "true"}}).start()
    proxy = daemon.proxy()
    first = proxy.runTestTask([{"seconds": 0}], {"requestId": "once"})
    assert first["status"]["code"] == 0
    assert proxy.runTestTask([{"seconds": 0}], {"requestId": "once"}) == first
    folder = os.path.join(daemon.state_dir, "requests")
    assert os.listdir(folder) == [os.path.basename(_record_path(folder, "once"))]
    wait_for(lambda: not os.listdir(folder), what="the expired answer's removal from disk")
    again = proxy.runTestTask([{"seconds": 0}], {"requestId": "once"})
    assert again["status"]["code"] == 0 and again["taskId"] != first["taskId"]


@pytest.mark.parametrize("bad", ["", 42, "x" * 257, {"a": 1}])
def test_bad_request_id_is_invalid_parameter(tmp_path, bad):
    shelf, d = _dispatcher(tmp_path)
    assert d.call("createThing", ["a", {"requestId": bad}])["status"]["code"] == 1000
    assert shelf.created == []


def test_without_request_id_every_call_runs(tmp_path):
    shelf, d = _dispatcher(tmp_path)
    d.call("createThing", ["a", {}])
    d.call("createThing", ["a"])
    assert shelf.created == ["a", "a"]


def test_read_only_verbs_ignore_request_id(tmp_path):
    _, d = _dispatcher(tmp_path)
    assert d.call("countThings", [{"requestId": "r1"}])["count"] == 0
    assert list(tmp_path.iterdir()) == []


def test_no_lock_is_kept_for_finished_calls(tmp_path):
    shelf, d = _dispatcher(tmp_path)
    d.call("createThing", ["", {"requestId": "failed"}])
    d.call("createThing", ["a", {"requestId": "worked"}])
    assert d.requests._busy == {}


def _record_path(folder, request_id):
    return os.path.join(folder, hashlib.sha256(request_id.encode()).hexdigest() + ".json")


def test_damaged_records_are_logged_and_dropped_at_start(make_hsmd):
    """A real hsmd starts over damaged request records, names each in its log, and still honours good ones."""
    daemon = make_hsmd().start()
    first = daemon.proxy().createVirtualDisk("local", "1048576", "", {}, {"requestId": "good", "autoFix": False})
    assert first["status"]["code"] == 0
    assert daemon.stop() == 0
    folder = os.path.join(daemon.state_dir, "requests")
    answer = {"status": {"code": 0, "message": "OK"}, "imageId": "x"}
    whole = {"verb": "createVirtualDisk", "fingerprint": "f" * 64, "answer": answer, "time": time.time()}
    damaged = {
        "no-time": {k: v for k, v in whole.items() if k != "time"},
        "time-a-string": {**whole, "time": "yesterday"},
        "time-null": {**whole, "time": None},
        "time-nan": {**whole, "time": float("nan")},
        "answer-a-list": {**whole, "answer": [1, 2]},
        "answer-a-failure": {**whole, "answer": {"status": {"code": 100, "message": "x"}}},
        "fingerprint-an-int": {**whole, "fingerprint": 7},
        "verb-missing": {k: v for k, v in whole.items() if k != "verb"},
    }
    paths = []
    for request_id, record in damaged.items():
        paths.append(_record_path(folder, request_id))
        with open(paths[-1], "w") as f:
            json.dump({"requestId": request_id, **record}, f)
    for name, data in [("list", b"[1, 2, 3]"), ("string", b'"just a string"'), ("garbage", b"\xff\xfe\x00\x01"),
                       ("deep", b"[" * 100000), ("empty", b""),
                       ("id-an-int", json.dumps({**whole, "requestId": 5}).encode()),
                       ("other-file", json.dumps({**whole, "requestId": "elsewhere"}).encode())]:
        paths.append(os.path.join(folder, f"{name}.json"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    os.mkdir(os.path.join(folder, "folder.json"))

    proxy = daemon.start().proxy()
    assert proxy.ping()["status"]["code"] == 0
    log = daemon.log_text()
    for path in paths + [os.path.join(folder, "folder.json")]:
        assert path in log, path
    assert not any(os.path.exists(path) for path in paths)
    again = proxy.createVirtualDisk("local", "1048576", "", {}, {"requestId": "good", "autoFix": False})
    assert again == first
    for request_id in damaged:  # a dropped record leaves its requestId free: the call runs
        answer = proxy.createVirtualDisk("local", "1048576", "", {}, {"requestId": request_id, "autoFix": False})
        assert answer["status"]["code"] == 0 and answer["imageId"] != "x", answer
