"""What the read verbs answer about images and repositories, as the wire (api.md) shows it.

The API reads through these and the engine's lookups only: it never reaches
into a repository's I/O helper or index itself.
"""

from __future__ import annotations

from hsm.errors import VolumeMetadataReadError
from hsm.sizes import format_size
from hsm.storage.image import BROKEN
from hsm.storage.options import check_id


def _unreadable(engine, repo_id: str, image_id: str) -> dict:  # engine: hsm.storage.engine.Engine
    """The status of an image whose record is damaged: broken, with the reason; {} for any other."""
    reason = engine.repository(repo_id).unreadable.get(check_id("imageId", image_id))
    if reason is None:
        return {}
    error = VolumeMetadataReadError(f"{image_id}: {reason}")
    return {"state": BROKEN, "kind": "", "size": "0", "hostId": 0, "stage": "", "percentComplete": -1,
            "lastError": error.status(), "tasks": []}


def image_status(engine, repo_id: str, image_id: str) -> dict:
    unreadable = _unreadable(engine, repo_id, image_id)
    if unreadable:
        return unreadable
    repo, image = engine.find(repo_id, image_id)
    return image.status(engine.image_tasks(repo, image))


def image_info(engine, repo_id: str, image_id: str) -> dict:
    """The status with the volume chain (each volume's allocation read from storage), base and userData."""
    unreadable = _unreadable(engine, repo_id, image_id)
    if unreadable:
        return dict(unreadable, id=image_id, volumes=[], baseSnapshotId="", userData={}, lease={})
    repo, image = engine.find(repo_id, image_id)
    volumes = []
    for vol in image.volumes:
        path = repo.volume_path(vol)
        allocated = repo.allocated(vol)
        volumes.append({"id": vol.id, "format": vol.format, "path": path, "image": vol.image,
                        "capacity": format_size(image.size), "allocated": format_size(allocated)})
    info = image.status(engine.image_tasks(repo, image))
    lease = repo.volume_leases.wire(image.id) if repo.volume_leases is not None else {}
    info.update(id=image.id, volumes=volumes, baseSnapshotId=image.base, userData=image.userData, lease=lease,
                generation=image.generation)
    return info


def repository_list(engine) -> dict:
    return {repo_id: repo.wire() for repo_id, repo in list(engine.repositories.items())}
