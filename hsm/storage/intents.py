"""Intents: the operation an image record says was committed but is not complete yet.

One class per operation, each naming the fix that completes it (`op`, also
the `op` of its JSON in the record). Records come from storage other hosts
write: `from_json` checks every field and raises ValueError for anything else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from hsm.ids import is_id


@dataclass(frozen=True, slots=True)
class CreateIntent:
    """Make the disk's top volume; with `optimize`, then copy its base into it (strategy=performance), where
    `offload` allows by a clone of the base's one volume (hsm.storage.offload) as the top is made."""
    op: ClassVar[str] = "create"
    optimize: bool = False
    preallocate: bool = False    # allocate the whole volume now (VDSM's PREALLOCATED)
    offload: bool = True


@dataclass(frozen=True, slots=True)
class SnapshotIntent:
    """Give `disk` a new top volume (`top`) over the snapshot's, then mark the snapshot complete."""
    op: ClassVar[str] = "snapshot"
    disk: str
    top: str


@dataclass(frozen=True, slots=True)
class CopyIntent:
    """Copy image `source` of repository `sourceRepo` (only its difference from `base`, if given);
    `offload`: a whole copy may be a reflink or copy_file_range (hsm.storage.offload), else qemu-img only."""
    op: ClassVar[str] = "copy"
    sourceRepo: str
    source: str
    base: str = ""
    offload: bool = True


@dataclass(frozen=True, slots=True)
class OptimizeIntent:
    """Copy a degraded disk out of its base, so that it stands alone."""
    op: ClassVar[str] = "optimize"


Intent = CreateIntent | SnapshotIntent | CopyIntent | OptimizeIntent
KINDS: dict[str, type[Intent]] = {cls.op: cls for cls in (CreateIntent, SnapshotIntent, CopyIntent, OptimizeIntent)}
# Fields that may be empty; every other str field is an id.
_MAY_BE_EMPTY = {(CopyIntent, "base")}


def to_json(intent: Intent | None) -> dict:
    return {"op": intent.op, **asdict(intent)} if intent is not None else {}


def from_json(data: object) -> Intent | None:
    """The intent in a record's `intent` field ({} for none); ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"intent={str(data)[:80]!r} is not valid")
    if not data:
        return None
    cls = KINDS.get(data.get("op"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"intent op={str(data.get('op'))[:80]!r} is not valid")
    values = {}
    for field in fields(cls):
        value = data.get(field.name, field.default)
        if field.type == "bool":
            ok = isinstance(value, bool)
        else:
            ok = is_id(value) or ((cls, field.name) in _MAY_BE_EMPTY and value == "")
        if not ok:
            raise ValueError(f"intent {field.name}={str(value)[:80]!r} is not valid")
        values[field.name] = value
    return cls(**values)
