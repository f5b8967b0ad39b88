"""Calling a verb by name and turning what it does into the status envelope.

Every answer is a dict with `status: {code, message}`; an HsmError becomes its
code, anything unexpected becomes 100 with the error logged. Only requests that
name no verb or do not fit its signature raise (the RPC layer makes faults of
them).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hsm.api.requests import RequestLog
from hsm.api.stats import CallStats
from hsm.api.verbs import Verb, collect
from hsm.errors import GeneralException, HsmError, InvalidParameterException

log = logging.getLogger("hsm.api")

OK = {"code": 0, "message": "OK"}

# Verbs that do no I/O and hold no lock for long: the RPC layer may answer them on its event loop.
QUICK = frozenset({"ping"})


class UnknownVerb(Exception):
    """No verb by that name."""


class BadArguments(Exception):
    """The arguments do not fit the verb's signature."""


class Dispatcher:
    def __init__(self, groups: list[object], requests: RequestLog | None = None,
                 stats: CallStats | None = None) -> None:
        self.verbs: dict[str, Verb] = collect(groups)
        self.requests = requests
        self.stats = stats or CallStats()

    def quick(self, name: str) -> bool:
        """Whether `name` is a verb that answers at once, without I/O or waiting for a lock held long."""
        return name in QUICK and name in self.verbs

    def call(self, name: str, args: tuple | list) -> dict:
        verb = self.verbs.get(name)
        if verb is None:
            raise UnknownVerb(f"unknown verb {name!r}")
        verb = verb.form_for(args)
        try:
            bound = verb.signature.bind(*args)
        except TypeError as e:
            raise BadArguments(f"{name}: {e}") from None
        start = time.monotonic()
        answer = self._answer(verb, bound.arguments, list(args))
        self.stats.record(name, time.monotonic() - start, answer["status"]["code"])
        return answer

    def _answer(self, verb: Verb, arguments: dict[str, Any], args: list) -> dict:
        options = arguments.get("options")
        request_id = options.get("requestId") if isinstance(options, dict) else None
        if verb.mutating and request_id is not None:
            try:
                return self.requests_log().run(request_id, verb.name, _without_request_id(args),
                                               lambda: self._run(verb, args))
            except HsmError as e:
                return self._failure(verb, e)
        return self._run(verb, args)

    def requests_log(self) -> RequestLog:
        if self.requests is None:
            self.requests = RequestLog(None, ttl=86400)
        return self.requests

    def _run(self, verb: Verb, args: list) -> dict:
        try:
            payload = verb.func(*args)
        except HsmError as e:
            return self._failure(verb, e)
        except Exception as e:
            log.exception("Unexpected error in %s", verb.name)
            return self._failure(verb, GeneralException(f"{type(e).__name__}: {e}"))
        answer = {"status": dict(OK)}
        if payload:
            answer.update(payload)
        return answer

    @staticmethod
    def _failure(verb: Verb, error: HsmError) -> dict:
        level = logging.ERROR if error.code == GeneralException.code else logging.INFO
        log.log(level, "%s failed: %s (code %d)", verb.name, error, error.code)
        return {"status": error.status()}


def _without_request_id(args: list) -> list:
    """The arguments a requestId's fingerprint covers: all but the requestId itself."""
    return [{k: v for k, v in a.items() if k != "requestId"} if isinstance(a, dict) and "requestId" in a else a
            for a in args]


def options_of(value: Any) -> dict:
    """The `options` struct of a verb: absent or nil is empty, anything else must be a struct."""
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise InvalidParameterException(f"options={value!r}: expected a struct")
    return value
