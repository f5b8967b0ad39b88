"""options.requestId: the idempotency plumbing every mutating verb goes through.

These tests drive hsm.api's Dispatcher in-process with a small verb group made
here, since the foundation has no mutating storage verb yet; the records are
real files under a real state folder.
"""

import threading
import time

import pytest

from hsm.api.dispatch import Dispatcher
from hsm.api.requests import RequestLog
from hsm.api.verbs import require_str, verb
from hsm.errors import InvalidParameterException


class Shelf:
    """A toy mutating verb group: counts how often its verbs really ran."""

    def __init__(self):
        self.created = []

    @verb(mutating=True)
    def createThing(self, name, options=None):
        require_str("name", name)
        time.sleep(0.05)
        self.created.append(name)
        return {"thingId": f"{name}-{len(self.created)}"}

    @verb()
    def countThings(self, options=None):
        return {"count": len(self.created)}


def _dispatcher(folder, ttl=3600):
    shelf = Shelf()
    return shelf, Dispatcher([shelf], RequestLog(str(folder), ttl=ttl))


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
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(d.call("createThing", ["a", {"requestId": "r"}])))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shelf.created == ["a"]
    assert all(a == answers[0] for a in answers)


def test_expired_answers_are_forgotten(tmp_path):
    shelf, d = _dispatcher(tmp_path, ttl=0.1)
    d.call("createThing", ["a", {"requestId": "r1"}])
    time.sleep(0.2)
    assert d.requests.expire() == 1
    assert list(tmp_path.iterdir()) == []
    assert d.call("createThing", ["a", {"requestId": "r1"}])["thingId"] == "a-2"


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
