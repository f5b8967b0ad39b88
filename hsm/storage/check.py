"""checkStorageRepository and fixStorageRepository: what a repository needs, and doing it.

The check lists the files on storage first and reads the index second: a
record is always durable before its volume file is made, so a file listed
without a record is truly left over, never an operation in flight.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

from hsm.errors import InvalidFix, VolumeDoesNotExist
from hsm.storage.fixes import FIX_TYPES, Fixes
from hsm.storage.image import BROKEN, OPTIMIZED, Image
from hsm.storage.repository import IMAGES, VOLUMES, FileRepository

log = logging.getLogger("hsm.storage.check")

TMP_AGE = 60.0   # seconds after which an atomic write's temporary file is surely abandoned
_FILE = re.compile(r"^(images|volumes)/(?!\.\.?$)[A-Za-z0-9_.-]+$")  # never "." or ".."

DESCRIPTIONS = {
    "create": "finish creating the image",
    "snapshot": "finish the snapshot",
    "copy": "finish copying the image",
    "optimize": "copy the base into the disk so it stands alone",
    "clean": "give back the space of the removed image",
    "merge": "fold the removed snapshot into the images that read through it",
}


def _listing(repo: FileRepository) -> set[str]:
    return {f"{folder}/{name}" for folder in (IMAGES, VOLUMES)
            for name in repo.io.listdir(os.path.join(repo.path, folder))}


def check(repo: FileRepository, fixes: Fixes) -> list[dict]:
    on_storage = _listing(repo)
    found = []
    for image in list(repo.images.values()):
        fix = fixes.needed(repo, image)
        if fix:
            found.append(_entry(repo, FIX_TYPES[fix], image.id, f"{image.id}: {DESCRIPTIONS[fix]}",
                                {"kind": fix}))
        else:
            _verify_files(repo, fixes, image, on_storage)
    leftovers = sorted(name for name in on_storage - repo.referenced_files() if _abandoned(repo, name))
    if leftovers:
        found.append(_entry(repo, "clean", "", f"remove {len(leftovers)} files no image owns",
                            {"kind": "orphans", "files": leftovers}))
    log.info("Checked repository %s: %d fixes", repo.id, len(found))
    return found


def _abandoned(repo: FileRepository, name: str) -> bool:
    if not name.endswith(".tmp"):
        return True
    try:
        return time.time() - repo.io.stat(os.path.join(repo.path, name))["mtime"] > TMP_AGE
    except FileNotFoundError:
        return False


def _verify_files(repo: FileRepository, fixes: Fixes, image: Image, on_storage: set[str]) -> None:
    """Mark an image broken when one of its volumes is gone, and usable again when it is back."""
    missing = [vol.id for vol in image.volumes if f"{VOLUMES}/{vol.filename}" not in on_storage]
    if missing and image.state != BROKEN:
        error = VolumeDoesNotExist(f"{image.id}: volume {missing[0]} is missing from storage")
        log.error("%s", error)
        fixes.update(repo, image, state=BROKEN,
                    lastError={"code": error.code, "message": str(error), "time": f"{time.time():.0f}"})
    elif not missing and image.state == BROKEN and image.lastError.get("code") == VolumeDoesNotExist.code:
        fixes.update(repo, image, state=OPTIMIZED, lastError={})


def _entry(repo: FileRepository, fix_type: str, image_id: str, description: str, data: dict) -> dict:
    opaque = json.dumps({"repo": repo.uuid, "image": image_id, **data}, sort_keys=True)
    return {"type": fix_type, "imageId": image_id, "description": description, "fix": opaque}


def run(repo: FileRepository, fixes: Fixes, opaque: object, task_id: str | None) -> str:
    """Start the fix that `opaque` (a `fix` from check) describes; returns its task id."""
    try:
        data = json.loads(opaque) if isinstance(opaque, str) else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("kind") not in FIX_TYPES:
        raise InvalidFix("pass a fix exactly as checkStorageRepository returned it")
    if data.get("repo") != repo.uuid:
        raise InvalidFix(f"the fix is for repository {data.get('repo')}, not {repo.id} ({repo.uuid})")
    image_id, files = data.get("image", ""), data.get("files", [])
    if not isinstance(image_id, str) or (image_id and image_id not in repo.images):
        raise InvalidFix(f"image {image_id!r} is not in {repo.id} any more: check again")
    if data["kind"] == "orphans":
        if not isinstance(files, list) or not all(isinstance(f, str) and _FILE.match(f) for f in files):
            raise InvalidFix("the fix's file list was changed")
        return fixes.start(repo, "orphans", "", "fixStorageRepository", task_id=task_id, extra={"files": files})
    return fixes.start(repo, data["kind"], image_id, "fixStorageRepository", task_id=task_id)
