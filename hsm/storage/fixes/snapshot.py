"""snapshot: give the disk a new top volume over the snapshot's, then mark the snapshot complete."""

from __future__ import annotations

from hsm.storage import qemuimg
from hsm.storage.fixes.base import Fix, StepFunc
from hsm.storage.image import OPTIMIZED, Image, Volume
from hsm.storage.intents import SnapshotIntent
from hsm.storage.repository import FileRepository
from hsm.tasks import StepContext


class SnapshotFix(Fix):
    name = "snapshot"
    fix_type = "mend"
    description = "finish the snapshot"

    def plan(self, args: dict) -> list[tuple[str, StepFunc]]:
        return [("make the disk's new top", self._overlay), ("switch the disk", self._switch),
                ("mark complete", self._done)]

    def extra_args(self, repo: FileRepository, image: Image) -> dict:
        return {"disk": image.intent.disk} if isinstance(image.intent, SnapshotIntent) else {}  # locked with it

    def missing_input(self, repo: FileRepository, image: Image) -> str:
        intent = image.intent
        if isinstance(intent, SnapshotIntent) and intent.disk not in repo.images:
            return f"the disk {intent.disk} it snapshots is gone"
        return ""

    def _parts(self, repo: FileRepository, snapshot: Image) -> tuple[Image, str] | None:
        """(the disk, its new top volume's id) while the snapshot is not complete and the disk not switched."""
        if not isinstance(snapshot.intent, SnapshotIntent):
            return None
        disk = repo.get(snapshot.intent.disk)
        return None if disk.top.id == snapshot.intent.top else (disk, snapshot.intent.top)

    def _overlay(self, ctx: StepContext, repo: FileRepository, snapshot: Image) -> None:
        parts = self._parts(repo, snapshot)
        if parts is not None:
            disk, top = parts
            new_top = Volume(top, disk.id)
            repo.make_volume(new_top, disk.size, snapshot.volumes)
            with repo.activated([new_top, *snapshot.volumes]):
                qemuimg.create(repo.volume_path(new_top), disk.size, backing=snapshot.top.filename,
                               backing_format=snapshot.top.format, compat=self.engine.qcow2_compat)

    def _switch(self, ctx: StepContext, repo: FileRepository, snapshot: Image) -> None:
        parts = self._parts(repo, snapshot)
        if parts is not None:
            disk, top = parts
            self.fixes.update(repo, disk, volumes=[Volume(top, disk.id), *snapshot.volumes], base=snapshot.id)

    def _done(self, ctx: StepContext, repo: FileRepository, snapshot: Image) -> None:
        if isinstance(snapshot.intent, SnapshotIntent):
            self.fixes.update(repo, snapshot, state=OPTIMIZED, intent=None, percentComplete=100, lastError={},
                              stage=ctx.task.stage)
