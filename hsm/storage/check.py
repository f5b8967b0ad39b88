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

from hsm.errors import ImageDoesNotExistInSD, InvalidFix, VolumeDoesNotExist, VolumeMetadataReadError
from hsm.storage.fixes import FIX_TYPES, Fixes
from hsm.storage.image import BROKEN, OPTIMIZED, Image
from hsm.storage.repository import VOLUMES, FileRepository

log = logging.getLogger("hsm.storage.check")

TMP_AGE = 60.0   # seconds after which an atomic write's temporary file is surely abandoned
_FILE = re.compile(r"^(images|volumes)/(?!\.\.?$)[A-Za-z0-9_.-]+$")  # never "." or ".."

def check(repo: FileRepository, fixes: Fixes) -> list[dict]:
    """Every fix the repository needs now, and every broken image no fix can repair (`fixable: false`).

    A fix that must wait for another (the merge of a snapshot that a pending
    create still reads through) is left out until that one has run. After a start from the index
    snapshot, it waits for the scan of every record first: what it answers is storage's truth.
    """
    repo.wait_scanned()
    repo.reread()
    on_storage = repo.listing()
    found = [_unreadable(image_id, reason) for image_id, reason in sorted(repo.unreadable.items())]
    for image in list(repo.images.values()):
        entry = _examine(repo, fixes, image, on_storage)
        if entry:
            found.append(entry)
    found += _damaged(repo)
    orphans = _orphans(repo, fixes, on_storage)
    found += [orphans] if orphans else []
    log.info("Checked repository %s: %d entries", repo.id, len(found))
    return found


def check_page(repo: FileRepository, fixes: Fixes, limit: int, marker: str) -> tuple[list[dict], str]:
    """What check answers, a page of it: the entries of the images above `marker` in id order, at most
    `limit`, and the marker of the next page ("" when none is left). The files no image owns come last.

    Only the images of the page are examined; the listing of the files is made for each page.
    """
    repo.wait_scanned()
    repo.reread()
    on_storage = repo.listing()
    found: list[dict] = []
    for image_id in repo.ids_after(marker):
        reason = repo.unreadable.get(image_id)
        image = repo.images.get(image_id)
        entry = _unreadable(image_id, reason) if reason is not None else \
            _examine(repo, fixes, image, on_storage) if image is not None else None
        if entry:
            found.append(entry)
            if len(found) == limit:
                log.info("Checked repository %s up to %s: %d entries", repo.id, image_id, len(found))
                return found, image_id
    found += _damaged(repo)
    orphans = _orphans(repo, fixes, on_storage)
    found += [orphans] if orphans else []
    log.info("Checked repository %s from %s: %d entries", repo.id, marker or "the start", len(found))
    return found, ""


def _examine(repo: FileRepository, fixes: Fixes, image: Image, on_storage: set[str]) -> dict | None:
    """The entry of one image: the fix it needs, or it broken with no fix; None when it needs nothing (now)."""
    fix = fixes.needed(repo, image)
    if not fix:
        _verify_files(repo, fixes, image, on_storage)
        image = repo.images.get(image.id, image)
        if image.state == BROKEN:
            return _unfixable(image.id, image.lastError.get("message", "the image is broken"),
                              image.lastError.get("code", VolumeDoesNotExist.code))
        return None
    if image.removed and (fixes.engine.needed_by(repo, image) or fixes.engine.is_prepared(repo, image.id)):
        return None  # its space comes back once what reads it is done
    missing = "" if image.removed else fixes.kinds[fix].missing_input(repo, image)
    if missing:
        return _unfixable(image.id, missing, ImageDoesNotExistInSD.code)
    kind = fixes.kinds[fix]
    entry = _entry(repo, kind.fix_type, image.id, f"{image.id}: {kind.description}", {"kind": fix})
    if image.lastError:
        entry["reason"] = image.lastError.get("message", "")
    return entry


def _orphans(repo: FileRepository, fixes: Fixes, on_storage: set[str]) -> dict | None:
    leftovers = sorted(name for name in repo.unowned(on_storage) if _abandoned(repo, name))
    if not leftovers:
        return None
    return _entry(repo, fixes.kinds["orphans"].fix_type, "", f"remove {len(leftovers)} files no image owns",
                  {"kind": "orphans", "files": leftovers})


def _damaged(repo: FileRepository) -> list[dict]:
    """A record no image id can be read from (a block-1 slot): listed, so that an admin learns of it."""
    return [{"type": "mend", "imageId": "", "description": f"{place}: a damaged record, and no fix can repair it",
             "fixable": False, "code": VolumeMetadataReadError.code,
             "reason": f"{place} holds a record that cannot be read ({why}); until it is repaired, no volume is "
                       "removed as left over"} for place, why in sorted(repo.damaged_places().items())]


def _unreadable(image_id: str, reason: str) -> dict:
    return _unfixable(image_id, f"the image record cannot be read: {reason}", VolumeMetadataReadError.code)


def _unfixable(image_id: str, reason: str, code: int) -> dict:
    return {"type": "mend", "imageId": image_id, "description": f"{image_id}: broken, and no fix can repair it",
            "fixable": False, "reason": reason, "code": code}


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
        fixes.update(repo, image, state=BROKEN, lastError=error.last_error())
    elif not missing and image.state == BROKEN and image.lastError.get("code") == VolumeDoesNotExist.code:
        fixes.update(repo, image, state=OPTIMIZED, lastError={})


def _entry(repo: FileRepository, fix_type: str, image_id: str, description: str, data: dict) -> dict:
    opaque = json.dumps({"repo": repo.uuid, "image": image_id, **data}, sort_keys=True)
    return {"type": fix_type, "imageId": image_id, "description": description, "fix": opaque, "fixable": True}


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
        if not isinstance(files, list) or not all(isinstance(f, str) and _FILE.fullmatch(f) for f in files):
            raise InvalidFix("the fix's file list was changed")
        return fixes.start(repo, "orphans", "", "fixStorageRepository", task_id=task_id, extra={"files": files})
    return fixes.start(repo, data["kind"], image_id, "fixStorageRepository", task_id=task_id)
