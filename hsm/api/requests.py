"""options.requestId: a repeated mutating call answers what the first one did.

Answers of successful calls are kept, persisted under the state dir, for
`[rpc] request_id_ttl` seconds, and at most `[rpc] max_request_ids` of them
(the oldest go first), so memory and disk stay bounded under any load. Old
answers are dropped as new ones come and by expire(), which hsmd calls
periodically. A failed call changed nothing, so its requestId stays free and
the caller may retry with it. Two calls with one requestId run one after the
other, never together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable

from hsm.atomicfile import atomic_remove, atomic_write
from hsm.errors import InvalidParameterException, RequestIdConflict

log = logging.getLogger("hsm.requests")

MAX_REQUEST_ID = 256


def fingerprint(verb: str, args: list) -> str:
    text = json.dumps([verb, args], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "requestId": (str, "a string"), "verb": (str, "a string"), "fingerprint": (str, "a string"),
    "answer": (dict, "a struct"), "time": ((int, float), "a number")}


def _checked(record: object) -> dict:
    """A stored record whose every field has the type run() relies on, else ValueError naming what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
    for name, (kind, what) in _FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"field {name!r} is {value!r:.60}, expected {what}")
    if not math.isfinite(record["time"]):
        raise ValueError(f"field 'time' is {record['time']!r}, expected a finite number")
    if not 0 < len(record["requestId"]) <= MAX_REQUEST_ID:
        raise ValueError(f"field 'requestId' is not 1 to {MAX_REQUEST_ID} characters")
    status = record["answer"].get("status")
    if not isinstance(status, dict) or status.get("code") != 0:
        raise ValueError("field 'answer' is not a successful answer (only those are kept)")
    return record


class RequestLog:
    """`clock` gives the wall-clock time an answer is stamped with and its TTL runs on."""

    def __init__(self, folder: str | None, ttl: float, max_answers: int = 10000,
                 clock: Callable[[], float] = time.time) -> None:
        self._folder = folder
        self._clock = clock
        self._ttl = ttl
        self._max_answers = max_answers
        self._lock = threading.Lock()
        self._answers: dict[str, dict] = {}  # oldest first: expiry looks only at the head
        self._busy: dict[str, list] = {}  # requestId -> [lock, users]
        if folder:
            os.makedirs(folder, exist_ok=True)
            self._load()

    def _path(self, request_id: str) -> str:
        name = hashlib.sha256(request_id.encode()).hexdigest()
        return os.path.join(self._folder or "", name + ".json")

    def _load(self) -> None:
        """Read the kept answers; a damaged record is logged with its path and removed, never fatal."""
        now = self._clock()
        kept = []
        for entry in os.scandir(self._folder):
            if not entry.name.endswith(".json"):
                continue
            try:
                with open(entry.path, encoding="utf-8") as f:
                    record = _checked(json.load(f))
            except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
                log.warning("Dropping damaged request record %s: %s", entry.path, e)
                self._drop(entry.path)
                continue
            if entry.name != os.path.basename(self._path(record["requestId"])):
                log.warning("Dropping request record %s: it holds requestId %r of another file",
                            entry.path, record["requestId"])
                self._drop(entry.path)
            elif now - record["time"] > self._ttl:
                self._drop(entry.path)
            else:
                kept.append(record)
        for record in sorted(kept, key=lambda r: r["time"]):
            self._answers[record["requestId"]] = record
        self.expire()  # past max_answers (a smaller limit than the last run's)

    @staticmethod
    def _drop(path: str) -> None:
        try:
            atomic_remove(path)
        except OSError as e:  # a folder named *.json, a read-only state dir: skip it, start anyway
            log.warning("Cannot remove request record %s: %s", path, e)

    def run(self, request_id: object, verb: str, args: list, call: Callable[[], dict]) -> dict:
        """Answer from the log if this requestId is known, else call and remember a success."""
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise InvalidParameterException(
                f"requestId={request_id!r}: expected a string of 1 to {MAX_REQUEST_ID} characters")
        digest = fingerprint(verb, args)
        with self._lock:
            busy = self._busy.setdefault(request_id, [threading.Lock(), 0])
            busy[1] += 1  # callers holding or waiting for this requestId's lock
        try:
            with busy[0]:
                return self._answer(request_id, verb, digest, call)
        finally:
            with self._lock:
                busy[1] -= 1
                if busy[1] == 0:
                    del self._busy[request_id]

    def _answer(self, request_id: str, verb: str, digest: str, call: Callable[[], dict]) -> dict:
        record = self._known(request_id)
        if record is not None:
            if record["verb"] != verb or record["fingerprint"] != digest:
                raise RequestIdConflict(f"{request_id!r} was used by {record['verb']} with other arguments")
            log.info("Repeated requestId %r of %s: answering as the first call", request_id, verb)
            return record["answer"]
        answer = call()
        if answer.get("status", {}).get("code") == 0:
            self._remember({"requestId": request_id, "verb": verb, "fingerprint": digest,
                            "answer": answer, "time": self._clock()})
        return answer

    def _known(self, request_id: str) -> dict | None:
        with self._lock:
            record = self._answers.get(request_id)
        if record is not None and self._clock() - record["time"] > self._ttl:
            return None  # expired: the next sweep drops it, or _remember replaces it
        return record

    def _remember(self, record: dict) -> None:
        if self._folder:
            atomic_write(self._path(record["requestId"]), json.dumps(record).encode())
        with self._lock:
            self._answers.pop(record["requestId"], None)  # an expired one goes to the end again
            self._answers[record["requestId"]] = record
            self._sweep(record["time"])

    def expire(self) -> int:
        """Forget answers older than the TTL or past max_answers; returns how many went."""
        with self._lock:
            return self._sweep(self._clock())

    def _sweep(self, now: float) -> int:
        """Drop the oldest answers while they are expired or too many (called under self._lock).

        Their files go too, without a durable sync: one left by a crash is expired
        or over the limit again at the next start. A requestId in use by a call
        keeps its file; that call rewrites it, or it goes at the next start.
        """
        old: list[str] = []
        for request_id, record in self._answers.items():
            over = 0 < self._max_answers < len(self._answers) - len(old)
            if not over and now - record["time"] <= self._ttl:
                break
            old.append(request_id)
        for request_id in old:
            del self._answers[request_id]
            if self._folder and request_id not in self._busy:
                try:
                    os.unlink(self._path(request_id))
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("Cannot remove request record %s: %s", self._path(request_id), e)
        return len(old)
