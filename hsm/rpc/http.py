"""HTTP/1.1 requests framed and checked from bytes: the head, then a body of Content-Length or chunks.

No I/O here: hsm.rpc.connection feeds what a peer sent and asks whether a
request is whole. Anything ambiguous about where a body ends (two different
Content-Length values, chunked beside Content-Length, an unknown transfer
coding) is refused, since a proxy in front could frame it differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
_MAX_CHUNK_LINE = 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):(.*)")  # greedy and linear: no backtracking on a long line
_DIGITS = re.compile(r"[0-9]{1,19}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_READ_FIELDS = frozenset({b"connection", b"content-length", b"transfer-encoding", b"expect"})  # others: checked only

REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout",
           413: "Request Entity Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented"}


class HttpError(Exception):
    """A request that cannot be framed; answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Head:
    method: str
    path: str
    keep_alive: bool
    length: int  # body bytes when not chunked
    chunked: bool
    expect_continue: bool


def parse_head(data: bytes, max_body: int) -> Head:
    """The request line and headers of `data` (without the blank line that ends them)."""
    lines = data.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
        raise HttpError(400, "not an HTTP/1.x request line")
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            raise HttpError(400, "malformed header line")
        name = field[1].lower()
        if name in _READ_FIELDS:
            fields.setdefault(name, []).append(field[2].strip(b" \t"))
    connection = {v.strip().lower() for value in fields.get(b"connection", []) for v in value.split(b",")}
    if parts[2] == b"HTTP/1.1":
        keep_alive = b"close" not in connection
    else:
        keep_alive = b"keep-alive" in connection
    chunked = _is_chunked(fields)
    length = _content_length(fields)
    if chunked and length is not None:
        raise HttpError(400, "Transfer-Encoding and Content-Length together")
    if length is not None and length > max_body:
        raise HttpError(413, f"request body of {length} bytes, over the {max_body} accepted")
    target = parts[1].decode("latin-1")
    if target.startswith(("http://", "https://")):  # absolute form: keep only the path
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    expect = b"".join(fields.get(b"expect", [])).lower()
    return Head(method=parts[0].decode("ascii"), path=target.partition("?")[0], keep_alive=keep_alive,
                length=length or 0, chunked=chunked, expect_continue=expect == b"100-continue")


def _content_length(fields: dict[bytes, list[bytes]]) -> int | None:
    values = {v.strip().decode("latin-1") for value in fields.get(b"content-length", []) for v in value.split(b",")}
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(400, "conflicting Content-Length headers")
    (value,) = values
    if not _DIGITS.fullmatch(value):
        raise HttpError(400, f"bad Content-Length {value[:40]!r}")
    return int(value)


def _is_chunked(fields: dict[bytes, list[bytes]]) -> bool:
    codings = [c.strip().lower() for value in fields.get(b"transfer-encoding", []) for c in value.split(b",")]
    if not codings:
        return False
    if codings != [b"chunked"]:
        raise HttpError(501 if codings[-1] == b"chunked" else 400, "only Transfer-Encoding: chunked is served")
    return True


class ChunkedBody:
    """Decodes a chunked body as its bytes arrive; `feed` says when the last chunk and trailers are in."""

    def __init__(self, max_body: int) -> None:
        self._max = max_body
        self._left = -1  # bytes of the current chunk still to come; -1: a size line is next
        self._trailers = False
        self.body = bytearray()

    def feed(self, buffer: bytearray) -> bool:
        """Consume what it can of `buffer`; True once the body is whole (the rest is the next request)."""
        while True:
            if self._left > 0:
                take = min(self._left, len(buffer))
                self.body += buffer[:take]
                del buffer[:take]
                self._left -= take
                if self._left:
                    return False
                self._left = -2  # the CRLF after the chunk's data
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > _MAX_CHUNK_LINE:
                    raise HttpError(400, "chunk line too long")
                return False
            line = bytes(buffer[:end])
            del buffer[:end + 2]
            if self._trailers:
                if not line:
                    return True
            elif self._left == -2:
                if line:
                    raise HttpError(400, "chunk data longer than its size")
                self._left = -1
            else:
                self._size_line(line)

    def _size_line(self, line: bytes) -> None:
        size = line.partition(b";")[0].strip()
        if not _HEX.fullmatch(size):
            raise HttpError(400, "bad chunk size")
        self._left = int(size, 16)
        if len(self.body) + self._left > self._max:
            raise HttpError(413, f"chunked request body over the {self._max} bytes accepted")
        if self._left == 0:
            self._trailers = True


def response(status: int, content_type: str, body: bytes, extra: tuple[tuple[str, str], ...] = (),
             close: bool = False) -> bytes:
    """A whole HTTP/1.1 response, head and body, ready to write."""
    head = [f"HTTP/1.1 {status} {REASONS[status]}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}"]
    head.extend(f"{name}: {value}" for name, value in extra)
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
