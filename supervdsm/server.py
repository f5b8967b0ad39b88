"""supervdsmd's server: checks each peer's credentials, then runs whitelisted verbs."""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import struct
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from hsm.errors import GeneralException, HsmError, InvalidParameterException, StorageTimeout, SupervdsmPeerRefused
from supervdsm import protocol
from supervdsm.verbs import PrivilegedVerb, check_args

log = logging.getLogger("supervdsm.server")

_UCRED = struct.Struct("3i")
REFUSE_READ_TIMEOUT = 2.0  # seconds a refused peer has to send its request before the answer


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel saw it connect."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


class _Handler(socketserver.BaseRequestHandler):
    server: SupervdsmServer

    def handle(self) -> None:
        pid, uid, gid = peer_credentials(self.request)
        if uid not in self.server.allowed_uids:
            log.warning("Refused peer pid=%d uid=%d gid=%d", pid, uid, gid)
            self._refuse(uid)
            return
        while True:
            try:
                request = protocol.recv_frame(self.request)
            except protocol.ProtocolError as e:
                if str(e) != "connection closed":
                    log.warning("Dropping peer pid=%d: %s", pid, e)
                return
            protocol.send_frame(self.request, self.server.answer(request, pid, uid, gid))

    def _refuse(self, uid: int) -> None:
        """Answer the peer's first request with 5009, then hang up.

        Its request is read first (for a moment at most): a socket closed with
        the request unread would give the peer a broken pipe, not the answer.
        """
        request_id = None
        self.request.settimeout(REFUSE_READ_TIMEOUT)
        try:
            request = protocol.recv_frame(self.request)
            request_id = request.get("id") if isinstance(request, dict) else None
        except (protocol.ProtocolError, OSError):
            pass
        try:
            protocol.send_frame(self.request, {"id": request_id if isinstance(request_id, int) else None,
                                               "error": SupervdsmPeerRefused(f"uid {uid}").status()})
        except OSError:
            pass


class SupervdsmServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # Connections waiting to be accepted: a Unix socket refuses (EAGAIN) past this, so many
    # clients reconnecting at once after a restart (VDSM's and hsmd's threads) must fit.
    request_queue_size = 128

    def __init__(self, path: str, verbs: dict[str, PrivilegedVerb], allowed_uids: set[int], mode: int = 0o660,
                 gid: int = -1, workers: int = 16) -> None:
        if os.path.exists(path):
            os.unlink(path)  # a socket left by a killed instance
        super().__init__(path, _Handler)
        os.chmod(path, mode)
        if gid >= 0:
            os.chown(path, -1, gid)
        self.verbs = verbs
        self.allowed_uids = allowed_uids
        self._runner = ThreadPoolExecutor(workers, thread_name_prefix="privileged")

    def answer(self, request: dict, pid: int, uid: int = 0, gid: int = 0) -> dict:
        """Run one request; a verb that hands a device to its caller gets the caller's (uid, gid) as `peer`."""
        call_id = request.get("id")
        try:
            verb = self.verbs.get(request.get("verb"))  # type: ignore[arg-type]
            if verb is None:
                raise InvalidParameterException(f"unknown verb {request.get('verb')!r}")
            args = check_args(verb, request.get("args", {}))
            log.info("pid %d: %s %s", pid, verb.name, verb.redact(args))
            if verb.peer:
                args = {**args, "peer": (uid, gid)}
            future = self._runner.submit(verb.func, **args)
            try:
                return {"id": call_id, "result": future.result(timeout=verb.timeout)}
            except FutureTimeout:
                raise StorageTimeout(f"{verb.name} took over {verb.timeout} s") from None
        except HsmError as e:
            return {"id": call_id, "error": e.status()}
        except Exception as e:
            log.exception("Privileged verb failed")
            return {"id": call_id, "error": GeneralException(f"{type(e).__name__}: {e}").status()}
