"""Copying and moving a VDSM image, its whole chain, to another domain: VDSM's moveImage,
moveMultipleImages and cloneImageStructure.

Each volume keeps its id. The chain is copied from the bottom up, each image
as an hsm copy on the one below it (only what it holds over its parent), and
each copy's fix runs inside the verb's one task, so the next copy finds its
base complete. A template at the bottom must be on the target already, as
VDSM required. A move then removes the source images, each removal's fix run
in the same task. Every step checks what is already done, so the task
resumes after a crash from where it was.
"""

from __future__ import annotations

import logging

from hsm.errors import ImageDoesNotExistInSD, InvalidParameterException, VolumeAlreadyExists, VolumeIsBusy
from hsm.storage.engine import Engine
from hsm.storage.fixes.manager import Fixes
from hsm.storage.image import Volume
from hsm.storage.options import ImageOptions
from hsm.storage.repository import FileRepository
from hsm.storage.volumes import volume_type
from hsm.tasks import EXCLUSIVE, SHARED, StepContext
from hsm.tasks.resources import IMAGE, REPOSITORY

log = logging.getLogger("hsm.storage")

COPY_OP, MOVE_OP = 1, 2  # VDSM's image operations


def plan(engine: Engine, src: FileRepository, dst: FileRepository, images: list[str], op: int,
         leaf_data: bool = True) -> dict:
    """The task's arguments: per image, its chain to copy (bottom first, ids only) and the template it
    needs on the target. Everything is checked here, before a task is started."""
    if op not in (COPY_OP, MOVE_OP):
        raise InvalidParameterException(f"op={op!r}: 1 (copy) or 2 (move)")
    if src.uuid == dst.uuid:
        raise InvalidParameterException(f"the source and target domain are both {src.uuid}")
    chains = []
    for image_id in images:
        image = src.get(image_id)
        if op == MOVE_OP and engine.is_prepared(src, image.id):
            raise VolumeIsBusy(f"{image.id} is prepared for use on this host; tear it down first")
        owners = [image if vol.image == image.id else src.get(vol.image) for vol in reversed(image.volumes)]
        template = owners[0].id if volume_type(owners[0]) == "SHARED" and owners[0] is not image else ""
        if template:
            known = dst.images.get(template)
            if known is None or known.removed or not known.usable():
                raise ImageDoesNotExistInSD(f"template {template} of image {image.id} is not in domain {dst.uuid}")
            owners = owners[1:]
        there = [owner.id for owner in owners if owner.id in dst.images and not dst.images[owner.id].removed]
        if there:
            raise VolumeAlreadyExists(f"{there[0]} of image {image.id} is in domain {dst.uuid} already")
        chains.append({"image": image.id, "template": template, "chain": [owner.id for owner in owners]})
    return {"src": src.uuid, "dst": dst.uuid, "images": chains, "op": op, "leafData": leaf_data}


def resources(args: dict) -> list[tuple[str, str, str]]:
    """Both domains shared; the images copied shared (exclusive when moved), their copies exclusive."""
    mode = EXCLUSIVE if args["op"] == MOVE_OP else SHARED
    wanted = [(REPOSITORY, args["src"], SHARED), (REPOSITORY, args["dst"], SHARED)]
    for entry in args["images"]:
        for image_id in entry["chain"]:
            wanted += [(IMAGE, f"{args['src']}/{image_id}", mode), (IMAGE, f"{args['dst']}/{image_id}", EXCLUSIVE)]
    return wanted


class Mover:
    """The steps of a move or copy task."""

    def __init__(self, engine: Engine, fixes: Fixes) -> None:
        self._engine = engine
        self._fixes = fixes

    def copy(self, ctx: StepContext) -> None:
        src, dst = self._engine.by_uuid(ctx.args["src"]), self._engine.by_uuid(ctx.args["dst"])
        for entry in ctx.args["images"]:
            base = entry["template"]
            for image_id in entry["chain"]:
                ctx.check_stop()
                last = image_id == entry["chain"][-1]
                self._copy_one(ctx, src, dst, image_id, base, empty=last and not ctx.args["leafData"])
                base = image_id

    def _copy_one(self, ctx: StepContext, src: FileRepository, dst: FileRepository, image_id: str, base: str,
                  empty: bool) -> None:
        """One image of the chain on the target, complete: committed unless it is, its fix run here."""
        known = dst.images.get(image_id)
        if known is None or known.removed:
            source = src.get(image_id)
            opts = ImageOptions(autoFix=False, imageId=image_id, imageHints={image_id: src.id})
            top = Volume(source.top.id, image_id, source.top.format)
            if empty:  # cloneImageStructure: the leaf on the target is new and empty (the VM mirrors it)
                self._engine.create_disk(dst.id, str(source.size), base or None, dict(source.userData), opts,
                                         top=top)
            else:
                self._engine.copy(dst.id, image_id, base or None, dict(source.userData), opts, top=top,
                                  kind=source.kind)
            log.info("%s of %s: committed in %s", ctx.task.verb, image_id, dst.id)
        record = dst.get(image_id)
        if record.intent is not None:
            self._fixes.run_inline(ctx, dst, record.intent.op, image_id)

    def remove_source(self, ctx: StepContext) -> None:
        """A move: the source images go, the image first, then its INTERNAL volumes, each fix run here."""
        if ctx.args["op"] != MOVE_OP:
            return
        src = self._engine.by_uuid(ctx.args["src"])
        for entry in ctx.args["images"]:
            for image_id in reversed(entry["chain"]):
                ctx.check_stop()
                record = src.images.get(image_id)
                if record is None:
                    continue  # removed and cleaned already
                if not record.removed:
                    self._engine.remove(src.id, image_id, ImageOptions(autoFix=False))
                    record = src.images[image_id]
                fix = self._fixes.needed(src, record)
                if fix:
                    self._fixes.run_inline(ctx, src, fix, image_id)

