"""Storage URIs: parsed, checked, normalized, and shown without their secrets.

    nfs://server[:port]/export?version=4.2&retrans=3&timeo=600
    posixfs://?spec=/dev/sdb1&vfsType=ext4&options=noatime    (any mount the kernel can make)
    iscsi://[user:password@]portal[:port]/iqn[?iface=name]
    localfs:///path

What is common to every URI is checked here; the rest by its scheme's class in SCHEMES
(hsm/connections/schemes.py). Two URIs that name the same storage the same way have the same
`key`: the physical connection that any number of CIDs share. The key never holds a password.
"""

from __future__ import annotations

import urllib.parse

from hsm.connections.schemes import SCHEMES, StorageURI, mountpoint
from hsm.errors import InvalidConnectionURI

__all__ = ["SCHEMES", "StorageURI", "mountpoint", "parse"]


def parse(uri: object) -> StorageURI:
    """`uri` checked and normalized by its scheme; InvalidConnectionURI (5014) when it is not valid."""
    if not isinstance(uri, str) or not uri:
        raise InvalidConnectionURI(f"{uri!r}: expected a URI string")
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as e:
        raise InvalidConnectionURI(f"{uri}: {e}") from None
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise InvalidConnectionURI(f"{uri}: unknown scheme {parts.scheme!r} (known: {', '.join(SCHEMES)})")
    if parts.fragment:
        raise InvalidConnectionURI(f"{uri}: no '#' part is allowed")
    return scheme.parse(uri, parts)
