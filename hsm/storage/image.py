"""The image record persisted in a repository, one JSON file per image.

An image is a chain of volumes, top first. A volume belongs to the image that
made it (`image`); a disk on a snapshot reads through the snapshot's volumes,
which the snapshot owns. `intent` is the operation committed but not yet
complete (the fix that finishes it reads it); `removed` marks an image whose
space a clean or merge fix still has to give back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

DISK = "disk"
SNAPSHOT = "snapshot"
KINDS = (DISK, SNAPSHOT)

OPTIMIZED = "optimized"
DEGRADED = "degraded"
BROKEN = "broken"


@dataclass
class Volume:
    id: str
    image: str          # the image that owns the volume file
    format: str = "qcow2"

    @property
    def filename(self) -> str:
        return f"{self.id}.{self.format}"


@dataclass
class Image:
    id: str
    kind: str
    size: int
    volumes: list[Volume]
    base: str = ""                  # the snapshot this image was made on
    userData: dict = field(default_factory=dict)
    state: str = BROKEN
    intent: dict = field(default_factory=dict)
    removed: bool = False
    hostId: int = 0
    stage: str = ""
    percentComplete: int = -1
    lastError: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    generation: int = 0

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
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Image:
        fields = json.loads(data)
        fields["volumes"] = [Volume(**vol) for vol in fields["volumes"]]
        return cls(**fields)

    # -- the wire -------------------------------------------------------

    def status(self, tasks: list[str]) -> dict:
        return {"state": self.state, "kind": self.kind, "size": str(self.size), "hostId": self.hostId,
                "stage": self.stage, "percentComplete": self.percentComplete, "lastError": self.lastError,
                "tasks": tasks}
