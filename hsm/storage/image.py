"""The image record persisted in a repository, one JSON file per image.

An image is a chain of volumes, top first. A volume belongs to the image that
made it (`image`); a disk on a snapshot reads through the snapshot's volumes,
which the snapshot owns. `intent` is the operation committed but not yet
complete (the fix that finishes it reads it); `removed` marks an image whose
space a clean or merge fix still has to give back. `task` is the id of the
task the commit handed out for that work, so the same id answers after a
restart of hsmd.

Records come from storage that other hosts write and that can be damaged:
`from_json` checks every field (ids as plain names, never path parts) and
raises ValueError for anything else.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields

from hsm.ids import is_id
from hsm.records import parse_object
from hsm.storage import intents
from hsm.storage.intents import Intent

DISK = "disk"
SNAPSHOT = "snapshot"
KINDS = (DISK, SNAPSHOT)

OPTIMIZED = "optimized"
DEGRADED = "degraded"
BROKEN = "broken"
STATES = (OPTIMIZED, DEGRADED, BROKEN)
FORMATS = ("qcow2", "raw")


def shared(text: str) -> str:
    """One object for each of the few texts many records repeat (kinds, states, formats, stages, verbs):
    100,000 images in memory hold one copy of each, not 100,000."""
    return sys.intern(text) if type(text) is str and len(text) <= 64 else text


@dataclass(slots=True)
class Volume:
    id: str
    image: str          # the image that owns the volume file
    format: str = "qcow2"

    @property
    def filename(self) -> str:
        if not is_id(self.id) or self.format not in FORMATS:  # never a path part, whatever a record said
            raise ValueError(f"volume {self.id!r} ({self.format!r}) is not a plain volume name")
        return f"{self.id}.{self.format}"


@dataclass(slots=True)
class Image:
    id: str
    kind: str
    size: int
    volumes: list[Volume]
    base: str = ""                  # the snapshot this image was made on
    userData: dict = field(default_factory=dict)
    state: str = BROKEN
    intent: Intent | None = None    # hsm.storage.intents
    removed: bool = False
    hostId: int = 0
    stage: str = ""
    percentComplete: int = -1
    lastError: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    generation: int = 0
    task: str = ""                  # the task handed out for the pending intent or removal
    verb: str = ""                  # the verb that committed it
    rewriting: int = 0              # the host whose merge or optimize changes the chain now (shared repositories)
    origin: str = ""                # a snapshot's content: set when it is taken, kept by its copies ("" unknown)

    # -- the chain ------------------------------------------------------

    @property
    def own(self) -> list[Volume]:
        """The volumes this image owns (its files), top first."""
        return [vol for vol in self.volumes if vol.image == self.id]

    @property
    def top(self) -> Volume:
        return self.volumes[0]

    def usable(self) -> bool:
        return not self.removed and self.state in (OPTIMIZED, DEGRADED)

    def copy(self) -> Image:
        return Image.from_json(self.to_json())

    # -- persistence ----------------------------------------------------

    def to_json(self) -> bytes:
        record = asdict(self)
        record["intent"] = intents.to_json(self.intent)
        return json.dumps(record, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Image:
        """The record in `data`, every field checked; ValueError says what is wrong."""
        record = parse_object(data)
        known = {f.name for f in fields(cls)}
        values = {name: value for name, value in record.items() if name in known}  # newer fields: ignored
        for name in ("id", "kind", "size", "volumes"):
            if name not in values:
                raise ValueError(f"no {name}")
        volumes = values["volumes"]
        if not isinstance(volumes, list) or not volumes:
            raise ValueError("volumes: not a list of volumes")
        values["volumes"] = [_volume(vol, values["id"]) for vol in volumes]
        values["intent"] = intents.from_json(values.get("intent", {}))
        for name in ("kind", "state", "stage", "verb"):
            if name in values:
                values[name] = shared(values[name])
        image = cls(**values)
        image._check()
        return image

    def _check(self) -> None:
        _require(is_id(self.id), "id", self.id)
        _require(self.kind in KINDS, "kind", self.kind)
        _require(_integer(self.size) and 0 < self.size < 1 << 64, "size", self.size)
        _require(self.base == "" or is_id(self.base), "base", self.base)
        _require(self.state in STATES, "state", self.state)
        _require(isinstance(self.removed, bool), "removed", self.removed)
        for name in ("userData", "lastError"):
            _require(isinstance(getattr(self, name), dict), name, getattr(self, name))
        _require(_integer(self.rewriting) and 0 <= self.rewriting <= 2000, "rewriting", self.rewriting)
        for name in ("hostId", "percentComplete", "generation"):
            _require(_integer(getattr(self, name)), name, getattr(self, name))
        _require(isinstance(self.created, (int, float)) and math.isfinite(self.created), "created", self.created)
        for name in ("stage", "verb"):
            _require(isinstance(getattr(self, name), str) and len(getattr(self, name)) < 256, name,
                     getattr(self, name))
        _require(self.task == "" or is_id(self.task), "task", self.task)
        _require(self.origin == "" or is_id(self.origin), "origin", self.origin)
        # The chain: the image's own volumes first (its top among them), then those it reads through.
        owners = [vol.image == self.id for vol in self.volumes]
        _require(owners[0] and owners == sorted(owners, reverse=True), "volumes (own ones first)",
                 [vol.image for vol in self.volumes])
        _require(len({vol.id for vol in self.volumes}) == len(self.volumes), "volumes (each once)",
                 [vol.id for vol in self.volumes])

    # -- the wire -------------------------------------------------------

    def status(self, tasks: list[str]) -> dict:
        return {"state": self.state, "kind": self.kind, "size": str(self.size), "hostId": self.hostId,
                "stage": self.stage, "percentComplete": self.percentComplete, "lastError": self.lastError,
                "tasks": tasks}


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name}={str(value)[:80]!r} is not valid")


def _volume(data: object, image_id: object) -> Volume:
    """A record's volume; the image's own id object for its owner when it is the image (one copy in memory)."""
    if not isinstance(data, dict):
        raise ValueError(f"volume={str(data)[:80]!r} is not valid")
    _require(is_id(data.get("id")), "volume id", data.get("id"))
    _require(is_id(data.get("image")), "volume owner", data.get("image"))
    _require(data.get("format", "qcow2") in FORMATS, "volume format", data.get("format"))
    owner = image_id if isinstance(image_id, str) and data["image"] == image_id else data["image"]
    return Volume(data["id"], owner, shared(data.get("format", "qcow2")))
