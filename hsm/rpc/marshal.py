"""XML-RPC bodies in and out, safely.

Requests are parsed by expat with no DTD at all (XML-RPC needs none, and a DTD
is where entity-expansion bombs live) and a bound on element depth. Answers
never carry None (VDSM's clients run without allow_none) and never an int
beyond XML-RPC's 32 bits.
"""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Callable
from typing import Any
from xml.parsers import expat

MAX_DEPTH = 200
INT_MAX = 2**31 - 1

# Fault codes of the XML-RPC interoperability spec, for requests we cannot run.
PARSE_ERROR = -32700
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class RequestError(Exception):
    """A request that is not a well-formed XML-RPC call; carries a fault code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def load_call(body: bytes) -> tuple[str, tuple]:
    """(method name, params) of a methodCall body."""
    unmarshaller = xmlrpc.client.Unmarshaller(use_datetime=False, use_builtin_types=True)
    unmarshaller.xml(None, None)  # expat hands over str: nothing left to decode
    parser = expat.ParserCreate()
    depth = 0

    def start(tag: str, attrs: dict) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise RequestError(PARSE_ERROR, f"request nested deeper than {MAX_DEPTH} elements")
        unmarshaller.start(tag, attrs)

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        unmarshaller.end(tag)

    def refuse_dtd(*_: Any) -> None:
        raise RequestError(PARSE_ERROR, "DTDs and entity declarations are not accepted")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = unmarshaller.data
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.buffer_text = True
    try:
        parser.Parse(body, True)
        method = unmarshaller.getmethodname()
        if unmarshaller._type is None and method:  # a call without <params>
            return method, ()
        params = unmarshaller.close()
    except RequestError:
        raise
    except Exception as e:  # expat errors, bad values, ResponseError: all mean "not XML-RPC"
        raise RequestError(PARSE_ERROR, f"malformed XML-RPC request: {type(e).__name__}: {e}") from None
    if not method:
        raise RequestError(PARSE_ERROR, "malformed XML-RPC request: no methodName")
    return method, params


class _WireMarshaller(xmlrpc.client.Marshaller):
    """The stdlib marshaller with hsm's wire rules applied as it writes, in one pass:
    None is left out of structs and is "" elsewhere; ints beyond 32 bits go as strings."""

    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def _dump_none(self, value: None, write: Callable[[str], Any]) -> None:
        write("<value><string></string></value>\n")

    def _dump_int(self, value: int, write: Callable[[str], Any]) -> None:
        if -INT_MAX - 1 <= value <= INT_MAX:
            write(f"<value><int>{value}</int></value>\n")
        else:
            write(f"<value><string>{value}</string></value>\n")

    def _dump_struct(self, value: dict, write: Callable[[str], Any], escape=xmlrpc.client.escape) -> None:
        write("<value><struct>\n")
        for key, item in value.items():
            if item is not None:
                write(f"<member>\n<name>{escape(str(key))}</name>\n")
                self.dispatch[type(item)](self, item, write)
                write("</member>\n")
        write("</struct></value>\n")

    dispatch[type(None)] = _dump_none
    dispatch[int] = _dump_int
    dispatch[dict] = _dump_struct


def dump_answer(answer: dict) -> bytes:
    """A methodResponse carrying `answer`, by hsm's wire rules (see _WireMarshaller)."""
    params = _WireMarshaller("utf-8", allow_none=False).dumps((answer,))
    return ("<?xml version='1.0'?>\n<methodResponse>\n" + params + "</methodResponse>\n").encode("utf-8")


def dump_fault(code: int, message: str) -> bytes:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message),
                               methodresponse=True, encoding="utf-8").encode("utf-8")
