"""supervdsmd's wire: length-prefixed JSON frames over a Unix stream socket.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON. A
request is {"id", "verb", "args"}; an answer is {"id", "result"} or {"id",
"error": {"code", "message"}}. JSON only: nothing a client sends is ever
unpickled or evaluated.
"""

from __future__ import annotations

import json
import socket
import struct

MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a frame, or closed mid-frame."""


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ProtocolError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_frame(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes is over {MAX_FRAME}")
    sock.sendall(_HEADER.pack(len(body)) + body)


def recv_frame(sock: socket.socket) -> dict:
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is over {MAX_FRAME}")
    try:
        message = json.loads(_recv_exactly(sock, size))
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a JSON object")
    return message
