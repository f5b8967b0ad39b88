"""create: make a new disk's top volume; optimize: copy a degraded disk out of its base."""

from __future__ import annotations

from hsm.storage import qemuimg
from hsm.storage.fixes.base import Fix, StepFunc, backing_format, backing_name
from hsm.storage.image import DEGRADED, OPTIMIZED, Image
from hsm.storage.intents import CreateIntent, OptimizeIntent
from hsm.storage.repository import FileRepository
from hsm.tasks import StepContext


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
        if not isinstance(image.intent, CreateIntent):
            return
        preallocate = image.intent.preallocate
        repo.make_volume(image.top, image.size, image.volumes[1:], preallocated=preallocate)
        with repo.activated(image.volumes):
            qemuimg.create(repo.volume_path(image.top), image.size, fmt=image.top.format,
                           backing=backing_name(image, 0), backing_format=backing_format(image, 0),
                           compat=self.engine.qcow2_compat, preallocate=preallocate and repo.allocates_on_write)

    def _done(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if not isinstance(image.intent, CreateIntent):
            return
        optimize = image.intent.optimize
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
