"""The names hsm checks before using them: ids it makes into file names, and iSCSI target names."""

from __future__ import annotations

import re
from typing import TypeGuard

# Letters, digits, '-' and '_' only: never '/', '.' or '..', so an id is always one plain file name.
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# A UUID in its textual form (VDSM's domain, pool, image, volume and VM ids).
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# iSCSI names (RFC 3720, RFC 3980): iqn.YYYY-MM.reversed.domain[:anything], eui. with 16 hex
# digits, naa. with 16 or 32. ASCII only: a name goes to iscsiadm as an argument.
IQN = re.compile(r"iqn\.[0-9]{4}-[0-9]{2}\.[A-Za-z0-9.-]+(:[A-Za-z0-9_.:-]+)?"
                 r"|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16}([0-9A-Fa-f]{16})?")


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID.fullmatch(value) is not None


def is_uuid(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and UUID.fullmatch(value) is not None


def is_iqn(value: object) -> bool:
    return isinstance(value, str) and IQN.fullmatch(value) is not None
