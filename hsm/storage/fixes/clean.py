"""clean: give back the space of a removed image; orphans: of files no image owns."""

from __future__ import annotations

from hsm.errors import VolumeImageHasChildren, VolumeIsBusy
from hsm.storage.fixes.base import Fix, StepFunc
from hsm.storage.image import Image
from hsm.storage.repository import VOLUMES, FileRepository
from hsm.tasks import EXCLUSIVE, StepContext
from hsm.tasks.resources import REPOSITORY


class CleanFix(Fix):
    name = "clean"
    fix_type = "clean"
    description = "give back the space of the removed image"

    def plan(self, args: dict) -> list[tuple[str, StepFunc]]:
        return [("remove volumes", self.volumes), ("remove the record", self.record)]

    def volumes(self, ctx: StepContext, repo: FileRepository, image: Image | None) -> None:
        if image is None or not image.removed:
            return
        repo.wait_scanned()  # a record not read yet may read through its volumes
        if repo.dependents(image):
            raise VolumeImageHasChildren(f"{image.id}: images read through it; it needs a merge fix")
        self.check_unused(repo, image)
        for vol in image.own:
            repo.remove_file(f"{VOLUMES}/{vol.filename}")
        if repo.volume_leases is not None:
            repo.volume_leases.forget(image.id)

    def record(self, ctx: StepContext, repo: FileRepository, image: Image | None) -> None:
        if image is not None and image.removed:
            repo.forget(image.id)
            repo.keep_reserve()

    def check_unused(self, repo: FileRepository, image: Image) -> None:
        """A removed image's volumes go only once no VM and no pending copy reads them."""
        if self.engine.is_prepared(repo, image.id):
            raise VolumeIsBusy(f"{image.id} is prepared on this host; its space comes back after teardownImage")
        waiting = self.engine.needed_by(repo, image)
        if waiting:
            raise VolumeIsBusy(f"{image.id}: the unfinished {waiting[0]} still reads it")
        if repo.volume_leases is not None:
            repo.volume_leases.check_unused(image.id)


class OrphansFix(Fix):
    name = "orphans"
    fix_type = "clean"
    description = "remove files no image owns"

    def plan(self, args: dict) -> list[tuple[str, StepFunc]]:
        return [("remove files", self._files)]

    def resources(self, args: dict) -> list[tuple[str, str, str]]:
        return [(REPOSITORY, args["repo"], EXCLUSIVE)]

    def _files(self, ctx: StepContext, repo: FileRepository, image: None) -> None:
        repo.wait_scanned()  # a record not read yet may own any of them
        with repo.lock:  # on a shared repository: the index is true to every host's records while it decides
            for name in sorted(repo.unowned(set(ctx.args.get("files", [])))):
                repo.remove_file(name)
