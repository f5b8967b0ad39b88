"""copy: the source (or only its difference from the base) into the new image's volume.

A whole copy of a source that is one volume of the target's format is made by
the array (both repositories on one of its file systems) or, on the same file
system, by a reflink or a copy_file_range of that file (hsm.storage.offload),
unless the intent says not to; anything else is qemu-img convert.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hsm.errors import CopyImageError, HsmError
from hsm.storage import offload, qemuimg
from hsm.storage.fixes.base import Fix, StepFunc, backing_format, backing_name
from hsm.storage.image import OPTIMIZED, Image
from hsm.storage.intents import CopyIntent
from hsm.storage.repository import FileRepository
from hsm.tasks import StepContext

log = logging.getLogger("hsm.storage.fixes")


class CopyFix(Fix):
    name = "copy"
    fix_type = "mend"
    description = "finish copying the image"
    data_error = CopyImageError

    def plan(self, args: dict) -> list[tuple[str, StepFunc]]:
        return [("copy the data", self._data), ("mark complete", self._done)]

    def extra_args(self, repo: FileRepository, image: Image) -> dict:
        intent = image.intent
        return {"sourceRepo": intent.sourceRepo, "source": intent.source} if isinstance(intent, CopyIntent) else {}

    def missing_input(self, repo: FileRepository, image: Image) -> str:
        intent = image.intent
        if not isinstance(intent, CopyIntent):
            return ""
        try:
            source_repo = self.engine.by_uuid(intent.sourceRepo)
        except HsmError:
            return f"the repository {intent.sourceRepo} of its source is not connected"
        if intent.source not in source_repo.images:
            return f"its source {intent.source} is gone from {source_repo.id}"
        return ""

    def _data(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        intent = image.intent
        if not isinstance(intent, CopyIntent):
            return
        source_repo = self.engine.by_uuid(intent.sourceRepo)
        source = source_repo.get(intent.source)
        with source_repo.activated(source.volumes):
            src = source_repo.volume_path(source.top)
            needed = None if repo.allocates_on_write else int(qemuimg.measure(
                source=src, source_format=source.top.format, target_format=image.top.format)["required"])
            repo.make_volume(image.top, image.size, image.volumes[1:], needed=needed)
            with repo.activated(image.volumes):
                self._copy(ctx, intent, source_repo, source, repo, image)

    def _copy(self, ctx: StepContext, intent: CopyIntent, source_repo: FileRepository, source: Image,
              repo: FileRepository, image: Image) -> None:
        src, target = source_repo.volume_path(source.top), repo.volume_path(image.top)
        formats = {"source_format": source.top.format, "target_format": image.top.format,
                   "compat": self.engine.qcow2_compat}
        if not intent.base:
            progress = self.fixes.progress(ctx, repo, image, 0, 99)
            if not self._offloaded(intent, source_repo, source, repo, image, progress):
                qemuimg.convert(src, target, **formats, progress=progress)
            return
        base_name, base_format = backing_name(image, 0), backing_format(image, 0)
        below = source.volumes[1] if len(source.volumes) > 1 else None
        if below is not None and below.image == intent.base:  # the source reads straight through the base
            qemuimg.convert(src, target, **formats, backing=base_name, backing_format=base_format,
                            progress=self.fixes.progress(ctx, repo, image, 0, 99))
            return
        if below is None:
            # The source stands alone now (optimized since the copy was committed): an empty overlay
            # of it, safely rebased onto the target's base copy, takes in just what differs from that base.
            qemuimg.create(target, image.size, backing=src, backing_format=source.top.format,
                           compat=self.engine.qcow2_compat)
            qemuimg.rebase(target, base_name, backing_format=base_format,
                           progress=self.fixes.progress(ctx, repo, image, 0, 99))
            return
        # Deeper: copy what the top holds over the source's own next volume, then let a
        # safe rebase onto the target's base copy in whatever else differs.
        qemuimg.convert(src, target, **formats, backing=source_repo.volume_path(below), backing_format=below.format,
                        progress=self.fixes.progress(ctx, repo, image, 0, 50))
        qemuimg.rebase(target, base_name, backing_format=base_format,
                       progress=self.fixes.progress(ctx, repo, image, 50, 99))

    def _offloaded(self, intent: CopyIntent, source_repo: FileRepository, source: Image, repo: FileRepository,
                   image: Image, progress: Callable[[float], None]) -> bool:
        """Copy the source's one volume file as it is, by the array or the file system, where one can;
        whether it did."""
        if not intent.offload or len(source.volumes) != 1 or source.top.format != image.top.format:
            return False
        if self.engine.is_prepared(source_repo, source.id):  # a VM may write it: qemu-img's locks say
            return False
        used = offload.clone_volume(self.engine.arrays, source_repo, source.top, repo, image.top, progress)
        if used:
            log.info("Copied %s of %s into %s of %s by %s", source.id, source_repo.id, image.id, repo.id, used)
        return bool(used)

    def _done(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if isinstance(image.intent, CopyIntent):
            self.fixes.update(repo, image, state=OPTIMIZED, intent=None, percentComplete=100, lastError={},
                              stage=ctx.task.stage)
