"""iSCSI SendTargets discovery: which targets a portal offers, each as (host, port, tpgt, iqn).

Discovery goes through supervdsmd's iscsiDiscover (iscsiadm, which also records what it finds as
open-iscsi node records, as VDSM's discovery did). iscsiadm refuses to discover at all when the
kernel has no iSCSI TCP transport, although the exchange itself is plain TCP; then, and only then,
libiscsi's iscsi-ls asks the portal from user space, unprivileged. CHAP credentials reach only
iscsi-ls's environment (iscsiDiscover takes none): never an argv, an answer or a log.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from hsm.errors import InvalidParameterException, NotAvailable, iSCSIDiscoveryError
from supervdsm.client import SupervdsmClient
from supervdsm.command import run

TRANSPORT = "/sys/class/iscsi_transport/tcp"  # there when the kernel can carry iSCSI sessions
DEFAULT_PORT = 3260
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:]+\]")
# One target a portal offers, as iscsiadm prints it ("10.0.0.1:3260,1 iqn...") and as iscsi-ls does
# ("Target:iqn... Portal:10.0.0.1:3260,1").
_ISCSIADM = re.compile(r"(?P<host>\S+):(?P<port>\d+),(?P<tpgt>\d+) (?P<iqn>\S+)")
_LIBISCSI = re.compile(r"Target:(?P<iqn>\S+) Portal:(?P<host>\S+):(?P<port>\d+),(?P<tpgt>\d+)")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    tpgt: int
    iqn: str

    def full(self) -> str:
        """The target as VDSM's fullTargets spelled it: "host:port,tpgt iqn"."""
        return f"{self.host}:{self.port},{self.tpgt} {self.iqn}"


def portal(host: object, port: object = DEFAULT_PORT) -> str:
    """"host:port" checked (an IPv6 address in brackets); InvalidParameterException otherwise."""
    if not isinstance(host, str):
        raise InvalidParameterException(f"connection={host!r}: expected a host name or address")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if not _HOST.fullmatch(host):
        raise InvalidParameterException(f"connection={host!r}: expected a host name or address")
    if port in (None, ""):
        port = DEFAULT_PORT
    if isinstance(port, str) and port.isdecimal():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InvalidParameterException(f"port={port!r}: expected 1 to 65535")
    return f"{host.lower()}:{port}"


def _targets(text: str, line: re.Pattern) -> list[Target]:
    found = []
    for match in filter(None, (line.fullmatch(row.strip()) for row in text.splitlines())):
        target = Target(match["host"], int(match["port"]), int(match["tpgt"]), match["iqn"])
        if target not in found:
            found.append(target)
    return found


def discover(supervdsm: SupervdsmClient, where: str, user: str = "", password: str = "") -> list[Target]:
    """The targets the portal `where` ("host:port") offers; iSCSIDiscoveryError (475) when it cannot be asked.

    `user` and `password` are CHAP credentials for the discovery session, used by the user-space path only.
    """
    result = supervdsm.call("iscsiDiscover", portal=where)
    if result.get("rc", 0) == 0:
        return _targets(result.get("out", ""), _ISCSIADM)
    reason = result.get("err", "").strip() or f"iscsiadm exit code {result['rc']}"
    if os.path.isdir(TRANSPORT):  # iscsiadm could work here: its failure is the portal's
        raise iSCSIDiscoveryError(f"{where}: {reason}")
    return _from_user_space(where, user, password, supervdsm.timeout("iscsiDiscover"), reason)


def _from_user_space(where: str, user: str, password: str, timeout: float, reason: str) -> list[Target]:
    """Discovery by libiscsi's iscsi-ls, for a host whose kernel cannot carry iSCSI (`reason`: iscsiadm's)."""
    env = {"LIBISCSI_CHAP_USERNAME": user, "LIBISCSI_CHAP_PASSWORD": password} if user else {}
    try:
        result = run(["iscsi-ls", f"iscsi://{where}/"], timeout, env=env)
    except NotAvailable:
        raise iSCSIDiscoveryError(f"{where}: {reason}; libiscsi's iscsi-ls is not installed either") from None
    if result["rc"] != 0:
        raise iSCSIDiscoveryError(f"{where}: " + (result["err"].strip() or f"iscsi-ls exit code {result['rc']}"))
    return _targets(result["out"], _LIBISCSI)
