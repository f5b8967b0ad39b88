"""create: make a new disk's top volume (with strategy=performance, a clone of its snapshot's where the array or
the file system clones); optimize: copy a degraded disk out of its base."""

from __future__ import annotations

import logging

from hsm.storage import offload, qemuimg
from hsm.storage.fixes.base import Fix, StepFunc, backing_format, backing_name
from hsm.storage.image import DEGRADED, OPTIMIZED, Image
from hsm.storage.intents import CreateIntent, OptimizeIntent
from hsm.storage.repository import FileRepository
from hsm.tasks import StepContext

log = logging.getLogger("hsm.storage.fixes")


class CreateFix(Fix):
    name = "create"
    fix_type = "mend"
    description = "finish creating the image"

    def plan(self, args: dict) -> list[tuple[str, StepFunc]]:
        steps: list[tuple[str, StepFunc]] = [("create the volume", self._volume), ("mark usable", self._done)]
        if args.get("optimize"):  # strategy=performance: then the copy of the base, in the same task
            steps.append(("copy the base in", self.fixes.kind(OptimizeFix).run))
        return steps

    def extra_args(self, repo: FileRepository, image: Image) -> dict:
        return {"optimize": True} if isinstance(image.intent, CreateIntent) and image.intent.optimize else {}

    def _volume(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if not isinstance(image.intent, CreateIntent) or self._cloned(image):
            return
        if image.intent.optimize and self._clone(repo, image):
            return
        preallocate = image.intent.preallocate
        repo.make_volume(image.top, image.size, image.volumes[1:], preallocated=preallocate)
        with repo.activated(image.volumes):
            qemuimg.create(repo.volume_path(image.top), image.size, fmt=image.top.format,
                           backing=backing_name(image, 0), backing_format=backing_format(image, 0),
                           compat=self.engine.qcow2_compat, preallocate=preallocate and repo.allocates_on_write)

    @staticmethod
    def _cloned(image: Image) -> bool:
        """Whether its snapshot's volume was cloned into its top already: a disk made on a snapshot, alone."""
        return isinstance(image.intent, CreateIntent) and image.intent.optimize and len(image.volumes) == 1

    def _clone(self, repo: FileRepository, image: Image) -> bool:
        """strategy=performance over a snapshot of one volume of the top's format: the top made a clone of
        it by the array or the file system (grown to the disk's size), so the disk stands alone at once;
        the record says so before this returns. Whether it was."""
        intent, below = image.intent, image.volumes[1:]
        if not isinstance(intent, CreateIntent) or not intent.offload or intent.preallocate or len(below) != 1 \
                or below[0].format != image.top.format:
            return False
        used = offload.clone_volume(self.engine.arrays, repo, below[0], repo, image.top)
        if not used:
            return False
        base_size = repo.get(image.base).size if image.base in repo.images else image.size
        if image.size > base_size:
            qemuimg.resize(repo.volume_path(image.top), image.size, fmt=image.top.format)
        self.fixes.update(repo, image, volumes=[image.top])
        log.info("Made disk %s of %s from snapshot %s by %s", image.id, repo.id, image.base, used)
        return True

    def _done(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if not isinstance(image.intent, CreateIntent):
            return
        optimize = image.intent.optimize and not self._cloned(image)
        self.fixes.update(repo, image, state=DEGRADED if optimize else OPTIMIZED,
                          intent=OptimizeIntent() if optimize else None, percentComplete=-1 if optimize else 100,
                          lastError={}, stage=ctx.task.stage)


class OptimizeFix(Fix):
    name = "optimize"
    fix_type = "optimize"
    description = "copy the base into the disk so it stands alone"

    def plan(self, args: dict) -> list[tuple[str, StepFunc]]:
        return [("copy the base in", self.run)]

    def run(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if not isinstance(image.intent, OptimizeIntent):
            return
        with self.fixes.rewriting(repo, [image.id], "it is optimized after teardownImage"):
            repo.grow_volume(image.top, image.size)  # it will hold all its data
            with repo.activated(image.volumes):
                qemuimg.rebase(repo.volume_path(image.top), None,
                               progress=self.fixes.progress(ctx, repo, image, 0, 99))
            self.fixes.update(repo, image, state=OPTIMIZED, intent=None, volumes=[image.top], percentComplete=100,
                              lastError={})
