"""The image verbs of the new storage API: thin checks over hsm.storage.engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

from hsm.api.dispatch import options_of
from hsm.api.verbs import verb
from hsm.errors import InvalidParameterException
from hsm.storage import answers
from hsm.storage.engine import Engine
from hsm.storage.options import ImageOptions, check_id
from hsm.storage.repository import FileRepository

MAX_USER_DATA = 64 * 1024


def _user_data(value: object) -> dict:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise InvalidParameterException(f"userData={value!r}: expected a struct")
    if len(json.dumps(value)) > MAX_USER_DATA:
        raise InvalidParameterException(f"userData: larger than {MAX_USER_DATA} bytes as JSON")
    return value


def _optional_id(name: str, value: object) -> str | None:
    return None if value in (None, "") else check_id(name, value)


def _live_after(repo: FileRepository, opts: ImageOptions) -> Iterator[str]:
    """What live_ids lists, above options.marker in id order: what a page of getImageList is cut from."""
    for image_id in repo.ids_after(opts.marker or ""):
        if image_id in repo.unreadable:
            if opts.kind is None:
                yield image_id
            continue
        image = repo.images.get(image_id)
        if image is not None and not image.removed and (opts.kind is None or image.kind == opts.kind):
            yield image_id


class ImagesAPI:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @verb(mutating=True)
    def createVirtualDisk(self, targetRepoId: str, size: str, baseSnapshotId: str | None = None,
                          userData: dict | None = None, options: dict | None = None) -> dict:
        opts = ImageOptions.parse(options_of(options))
        return {"imageId": self._engine.create_disk(targetRepoId, size, _optional_id("baseSnapshotId", baseSnapshotId),
                                                    _user_data(userData), opts)}

    @verb(mutating=True)
    def createSnapshot(self, targetRepoId: str, baseVirtualDiskId: str, userData: dict | None = None,
                       options: dict | None = None) -> dict:
        opts = ImageOptions.parse(options_of(options))
        return {"imageId": self._engine.create_snapshot(targetRepoId, check_id("baseVirtualDiskId", baseVirtualDiskId),
                                                        _user_data(userData), opts)}

    @verb(mutating=True)
    def copyImage(self, targetRepoId: str, imageId: str, baseImageId: str | None = None,
                  userData: dict | None = None, options: dict | None = None) -> dict:
        opts = ImageOptions.parse(options_of(options))
        return {"imageId": self._engine.copy(targetRepoId, check_id("imageId", imageId),
                                             _optional_id("baseImageId", baseImageId), _user_data(userData), opts)}

    @verb(mutating=True)
    def removeImage(self, repoId: str, imageId: str, options: dict | None = None) -> dict:
        self._engine.remove(repoId, imageId, ImageOptions.parse(options_of(options)))
        return {}

    @verb()
    def getImageStatus(self, repoId: str, imageId: str, options: dict | None = None) -> dict:
        return {"image": answers.image_status(self._engine, repoId, imageId)}

    @verb()
    def getImageInfo(self, repoId: str, imageId: str, options: dict | None = None) -> dict:
        return {"image": answers.image_info(self._engine, repoId, imageId)}

    @verb()
    def getImageList(self, repoId: str, options: dict | None = None) -> dict:
        opts = ImageOptions.parse(options_of(options))
        repo = self._engine.repository(repoId)
        if not opts.paged:
            return {"images": repo.live_ids(opts.kind)}
        images, after = opts.page(_live_after(repo, opts))
        return {"images": images, **({"marker": after} if after else {})}

    @verb()
    def isSnapshotOf(self, virtualDiskId: str, baseSnapshotId: str) -> dict:
        return {"result": self._engine.is_snapshot_of(virtualDiskId, baseSnapshotId)}

    @verb()
    def getImageTasks(self, imageId: str, options: dict | None = None) -> dict:
        repo, image = self._engine.locate(imageId, ImageOptions.parse(options_of(options)))
        return {"tasks": self._engine.image_tasks(repo, image)}

    @verb(mutating=True)
    def prepareImage(self, repoId: str, imageId: str, options: dict | None = None) -> dict:
        readonly = options_of(options).get("readonly")
        if readonly is not None and not isinstance(readonly, bool):
            raise InvalidParameterException(f"options.readonly={readonly!r}: expected a boolean")
        path, readonly = self._engine.prepare(repoId, imageId, readonly)
        return {"path": path, "readonly": readonly}

    @verb(mutating=True)
    def teardownImage(self, repoId: str, imageId: str, options: dict | None = None) -> dict:
        options_of(options)
        self._engine.teardown(repoId, imageId)
        return {}
