"""merge: fold a removed snapshot into the images that read through it, then clean it."""

from __future__ import annotations

import logging

from hsm.errors import MergeSnapshotsError
from hsm.storage import qemuimg
from hsm.storage.fixes.base import Fix, StepFunc
from hsm.storage.fixes.clean import CleanFix
from hsm.storage.image import Image, Volume
from hsm.storage.repository import FileRepository
from hsm.tasks import EXCLUSIVE, StepContext
from hsm.tasks.resources import REPOSITORY

log = logging.getLogger("hsm.storage.fixes")


class MergeFix(Fix):
    name = "merge"
    fix_type = "merge"
    description = "fold the removed snapshot into the images that read through it"
    data_error = MergeSnapshotsError

    def plan(self, args: dict) -> list[tuple[str, StepFunc]]:
        clean = self.fixes.kind(CleanFix)
        return [("rebase the children", self._rebase), ("update the children", self._records),
                ("remove volumes", clean.volumes), ("remove the record", clean.record)]

    def extra_args(self, repo: FileRepository, image: Image) -> dict:
        return {"children": sorted(child.id for child in repo.dependents(image))}  # the images it rewrites

    def resources(self, args: dict) -> list[tuple[str, str, str]]:
        return [(REPOSITORY, args["repo"], EXCLUSIVE)]

    def _rebase(self, ctx: StepContext, repo: FileRepository, snapshot: Image | None) -> None:
        if snapshot is None or not snapshot.removed:
            return
        below = snapshot.volumes[len(snapshot.own)] if len(snapshot.volumes) > len(snapshot.own) else None
        own_names = {vol.filename for vol in snapshot.own}
        wanted = below.filename if below else ""
        above: dict[str, Volume] = {}   # the volumes that may read through the snapshot's own: rebased if they do
        direct: set[str] = set()       # of those, the ones the records put right above it
        sizes: dict[str, int] = {}      # the virtual size of each
        chains: dict[str, list[Volume]] = {}  # each one's chain, as the records say
        self.fixes.kind(CleanFix).check_unused(repo, snapshot)
        children = repo.dependents(snapshot)
        for child in children:
            index = next(i for i, vol in enumerate(child.volumes) if vol.id == snapshot.top.id)
            # Every volume above, not only the next: a merge cut off between its rebase and its records (a
            # kill) leaves a volume whose header already skips the volume the records still put under it.
            for i in range(index):
                vol = child.volumes[i]
                above[vol.id], sizes[vol.id], chains[vol.id] = vol, child.size, child.volumes[i:]
            if index > 0:
                direct.add(child.volumes[index - 1].id)
        with self.fixes.rewriting(repo, [child.id for child in children],
                                  f"snapshot {snapshot.id} is merged after teardownImage"):
            for vol in above.values():
                if not repo.volume_exists(vol):  # gone behind hsmd's back: its image is reported broken
                    continue
                with repo.activated(chains[vol.id]):
                    path = repo.volume_path(vol)
                    report = qemuimg.info(path)
                    current = report.get("backing-filename", "") if isinstance(report, dict) else ""
                    if current == wanted or (current not in own_names and vol.id not in direct):
                        continue
                    # it takes in what the snapshot's own volumes hold (a file grows by itself)
                    repo.grow_volume(vol, sizes[vol.id], sum(repo.allocated(own) for own in snapshot.own))
                    log.info("Merging snapshot %s into volume %s", snapshot.id, vol.id)
                    qemuimg.rebase(path, wanted or None, backing_format=below.format if below else "qcow2",
                                   progress=lambda percent: ctx.check_stop())

    def _records(self, ctx: StepContext, repo: FileRepository, snapshot: Image | None) -> None:
        if snapshot is None or not snapshot.removed:
            return
        children = repo.dependents(snapshot)
        with self.fixes.rewriting(repo, [child.id for child in children],
                                  f"snapshot {snapshot.id} is merged after teardownImage"):
            for child in children:
                volumes = [vol for vol in child.volumes if vol.image != snapshot.id]
                self.fixes.update(repo, child, volumes=volumes,
                                  base=snapshot.base if child.base == snapshot.id else child.base)
