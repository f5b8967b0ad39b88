"""VDSM's volume and image verbs, on hsm's images through hsm.storage.volumes.

Verbs VDSM ran as SPM tasks answer the task's id under `uuid` at once; the
task is the fix the engine starts (options.taskId names it, as VDSM's own
task ids do through vdsm_shim). prepareImage, teardownImage and copyImage
share their names with the new API and are told apart by their arguments:
VDSM's forms pass the pool's UUID second and more arguments.
"""

from __future__ import annotations

import uuid

from hsm.api.dispatch import options_of
from hsm.api.legacy_domains import parse_bool
from hsm.api.verbs import verb
from hsm.errors import ImageExists, InvalidParameterException, VolumeAlreadyExists, VolumeDoesNotExist
from hsm.storage import moves
from hsm.storage.block import BlockRepository
from hsm.storage.domains import BLANK_UUID, Domains, check_uuid, number
from hsm.storage.engine import Engine
from hsm.storage.image import SNAPSHOT
from hsm.storage.lvm import MiB
from hsm.storage.options import ImageOptions, check_id
from hsm.storage.pools import Pools
from hsm.storage.repository import FileRepository
from hsm.storage.volumes import Located, Volumes
from hsm.tasks import Step, StepContext, TaskKind, TaskManager

DONE = "vdsmDone"  # the task a repeated create answers with: its work was done before
MOVE = "vdsmMove"  # moveImage, moveMultipleImages, cloneImageStructure: hsm.storage.moves
SYNC_TYPES = ("INTERNAL", "LEAF", "ALL")


def _vdsm_form(args: tuple) -> bool:
    """prepareImage/teardownImage(sdUUID, spUUID, imgUUID, ...): a string third, where the new API's is options."""
    return len(args) >= 3 and isinstance(args[2], str)


def _vdsm_copy(args: tuple) -> bool:
    """VDSM's copyImage takes at least 7 arguments; the new API's at most 5."""
    return len(args) > 5


class LegacyVolumesAPI:
    def __init__(self, engine: Engine, domains: Domains, pools: Pools, tasks: TaskManager) -> None:
        self._engine = engine
        self._domains = domains
        self._pools = pools
        self._tasks = tasks
        self._volumes = Volumes(engine)
        tasks.register(TaskKind(DONE, lambda args: [Step("nothing left to do", self._nothing, idempotent=True)]))
        mover = moves.Mover(engine, engine.fixes)
        tasks.register(TaskKind(MOVE, lambda args: [Step("copy the chain", mover.copy, idempotent=True),
                                                    Step("remove the source", mover.remove_source, idempotent=True)],
                                moves.resources))

    @staticmethod
    def _nothing(ctx: StepContext) -> dict:
        return {}

    # -- arguments ---------------------------------------------------------

    def _domain(self, sd_uuid: object, sp_uuid: object) -> FileRepository:
        """The domain, after the pool: blank or empty, or a connected pool (309)."""
        if sp_uuid not in ("", None, BLANK_UUID):
            self._pools.connected(sp_uuid)
        return self._domains.get(sd_uuid)

    @staticmethod
    def _task_options(options: object) -> ImageOptions:
        opts = options_of(options)
        task_id = check_id("options.taskId", opts["taskId"]) if "taskId" in opts else str(uuid.uuid4())
        return ImageOptions(taskId=task_id)

    def _locate(self, sd_uuid: object, sp_uuid: object, img_uuid: object, vol_uuid: object) -> Located:
        return self._volumes.locate(self._domain(sd_uuid, sp_uuid), img_uuid, vol_uuid)

    def _done(self, verb_name: str, task_id: str) -> dict:
        """A task that ends at once: the answer of a create asked again after it was made."""
        return {"uuid": self._tasks.start(DONE, verb_name, {}, task_id=task_id).id}

    @staticmethod
    def _no_post_zero(post_zero: object) -> None:
        if parse_bool("postZero", post_zero):
            raise InvalidParameterException("postZero=true: wiping removed volumes is not supported yet")

    # -- creating ------------------------------------------------------------

    @verb(mutating=True)
    def createVolume(self, sdUUID: str, spUUID: str, imgUUID: str, size: int | str, volFormat: int,
                     preallocate: int, diskType: str, volUUID: str, desc: str, srcImgUUID: str = "",
                     srcVolUUID: str = "", options: dict | None = None) -> dict:
        """A new image (no source), a new leaf over the image's leaf (a snapshot), or an image on a
        template's volume. size: an integer counts 512-byte sectors, a string bytes."""
        repo = self._domain(sdUUID, spUUID)
        opts = self._task_options(options)
        try:
            task_id, existed = self._volumes.create(repo, imgUUID, size, volFormat, preallocate, diskType, volUUID,
                                                    desc, srcImgUUID, srcVolUUID, opts)
        except ImageExists as e:
            raise VolumeAlreadyExists(f"{volUUID}: {e.detail} with other arguments") from None
        return self._done("createVolume", task_id) if existed else {"uuid": task_id}

    @verb(mutating=True, name="copyImage", when=_vdsm_copy)
    def vdsm_copyImage(self, sdUUID: str, spUUID: str, vmUUID: str, srcImgUUID: str, srcVolUUID: str,
                       dstImgUUID: str, dstVolUUID: str, description: str = "", dstSdUUID: str = "",
                       volType: int | str = 6, volFormat: int | str = 3, preallocate: int | str = 0,
                       postZero: bool | str = False, force: bool | str = False, options: dict | None = None) -> dict:
        """The chain up to srcVolUUID, collapsed into a new image of one volume (a template with volType 6)."""
        source = self._locate(sdUUID, spUUID, srcImgUUID, srcVolUUID)
        target = self._domains.get(dstSdUUID) if dstSdUUID not in ("", None, BLANK_UUID) else source.repo
        if vmUUID:
            check_uuid("vmUUID", vmUUID, blank=True)
        self._no_post_zero(postZero)
        parse_bool("force", force)
        opts = self._task_options(options)
        try:
            existed = self._volumes.copy(source.repo, source, target, dstImgUUID, dstVolUUID, description, volType,
                                         volFormat, preallocate, opts)
        except ImageExists as e:
            raise VolumeAlreadyExists(f"{dstVolUUID}: {e.detail} with other arguments") from None
        return self._done("copyImage", opts.taskId or "") if existed else {"uuid": opts.taskId}

    # -- between domains -----------------------------------------------------------

    def _move(self, verb_name: str, sp_uuid: object, src_uuid: object, dst_uuid: object, images: list[str],
              op: int, options: object, leaf_data: bool = True) -> dict:
        src = self._domain(src_uuid, sp_uuid)
        dst = self._domains.get(dst_uuid)
        opts = self._task_options(options)
        for image_id in images:
            self._volumes.image(src, image_id)
        args = moves.plan(self._engine, src, dst, images, op, leaf_data)
        return {"uuid": self._tasks.start(MOVE, verb_name, args, task_id=opts.taskId).id}

    @verb(mutating=True)
    def moveImage(self, spUUID: str, srcDomUUID: str, dstDomUUID: str, imgUUID: str, vmUUID: str,
                  op: int | str, postZero: bool | str = False, force: bool | str = False,
                  options: dict | None = None) -> dict:
        """Copy (op 1) or move (op 2) the image, every volume with its id, to another domain."""
        if vmUUID:
            check_uuid("vmUUID", vmUUID, blank=True)
        self._no_post_zero(postZero)
        parse_bool("force", force)
        return self._move("moveImage", spUUID, srcDomUUID, dstDomUUID, [check_uuid("imgUUID", imgUUID)],
                          number("op", op), options)

    @verb(mutating=True)
    def moveMultipleImages(self, spUUID: str, srcDomUUID: str, dstDomUUID: str, imgDict: dict, vmUUID: str,
                           force: bool | str = False, options: dict | None = None) -> dict:
        """Move every image of imgDict ({imgUUID: postZero}) in one task."""
        if not isinstance(imgDict, dict) or not imgDict:
            raise InvalidParameterException("imgDict: expected {imgUUID: postZero}")
        for image_id, post_zero in imgDict.items():
            check_uuid("imgUUID", image_id)
            self._no_post_zero(post_zero)
        if vmUUID:
            check_uuid("vmUUID", vmUUID, blank=True)
        parse_bool("force", force)
        return self._move("moveMultipleImages", spUUID, srcDomUUID, dstDomUUID, sorted(imgDict), moves.MOVE_OP,
                          options)

    @verb(mutating=True)
    def cloneImageStructure(self, spUUID: str, sdUUID: str, imgUUID: str, dstSdUUID: str,
                            options: dict | None = None) -> dict:
        """The image's chain on another domain, its leaf new and empty (a live migration mirrors the leaf).
        The INTERNAL volumes are copied with their data now: a snapshot here is never empty, and never
        changes, so syncImageData INTERNAL then has nothing left to do."""
        return self._move("cloneImageStructure", spUUID, sdUUID, dstSdUUID, [check_uuid("imgUUID", imgUUID)],
                          moves.COPY_OP, options, leaf_data=False)

    @verb(mutating=True)
    def syncImageData(self, spUUID: str, sdUUID: str, imgUUID: str, dstSdUUID: str, syncType: str,
                      options: dict | None = None) -> dict:
        """INTERNAL: checks that cloneImageStructure's copies are complete (they were made with their data).
        LEAF and ALL would write into a leaf the target already has: not supported here (1000)."""
        if syncType not in SYNC_TYPES:
            raise InvalidParameterException(f"syncType={syncType!r}: expected one of {', '.join(SYNC_TYPES)}")
        src = self._domain(sdUUID, spUUID)
        dst = self._domains.get(dstSdUUID)
        opts = self._task_options(options)
        if syncType != "INTERNAL":
            raise InvalidParameterException(f"syncType={syncType}: only INTERNAL (the leaf is the VM's to mirror)")
        image = self._volumes.image(src, imgUUID)
        for vol in image.volumes[1:]:
            copied = dst.images.get(vol.image)
            if copied is None or copied.removed or not copied.usable():
                raise VolumeDoesNotExist(f"{vol.id} of image {image.id} is not complete in domain {dst.uuid}")
        return self._done("syncImageData", opts.taskId or "")

    # -- removing --------------------------------------------------------------

    @verb(mutating=True)
    def deleteImage(self, sdUUID: str, spUUID: str, imgUUID: str, postZero: bool | str = False,
                    force: bool | str = False, options: dict | None = None) -> dict:
        repo = self._domain(sdUUID, spUUID)
        self._no_post_zero(postZero)
        parse_bool("force", force)
        opts = self._task_options(options)
        self._volumes.delete_image(repo, imgUUID, opts)
        return {"uuid": opts.taskId}

    @verb(mutating=True)
    def deleteVolume(self, sdUUID: str, spUUID: str, imgUUID: str, volumes: list, postZero: bool | str = False,
                     force: bool | str = False, options: dict | None = None) -> dict:
        repo = self._domain(sdUUID, spUUID)
        self._no_post_zero(postZero)
        parse_bool("force", force)
        opts = self._task_options(options)
        self._volumes.delete_volumes(repo, imgUUID, volumes, opts)
        return {"uuid": opts.taskId}

    @verb(mutating=True)
    def mergeSnapshots(self, sdUUID: str, spUUID: str, vmUUID: str, imgUUID: str, ancestor: str, successor: str,
                       postZero: bool | str = False, options: dict | None = None) -> dict:
        """Fold the INTERNAL volumes from `ancestor` up to below `successor` into it (hsm's merge fix)."""
        repo = self._domain(sdUUID, spUUID)
        if vmUUID:
            check_uuid("vmUUID", vmUUID, blank=True)
        self._no_post_zero(postZero)
        opts = self._task_options(options)
        self._volumes.merge(repo, imgUUID, ancestor, successor, opts)
        return {"uuid": opts.taskId}

    @verb(mutating=True)
    def uploadVolume(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str, srcPath: str, size: int | str,
                     method: str = "rsync", options: dict | None = None) -> dict:
        """The volume's content from an http(s) URL (hsm.storage.volumes.Volumes.upload), answered when done.
        `method` is VDSM's (rsync or wget; VDSM itself always ran rsync): the URL decides here."""
        options_of(options)
        if method not in ("rsync", "wget"):
            raise InvalidParameterException(f"method={method!r}: rsync or wget")
        number("size", size)
        self._volumes.upload(self._locate(sdUUID, spUUID, imgUUID, volUUID), srcPath)
        return {}

    # -- describing --------------------------------------------------------------

    @verb()
    def getVolumesList(self, sdUUID: str, spUUID: str, imgUUID: str = BLANK_UUID,
                       options: dict | None = None) -> dict:
        options_of(options)
        repo = self._domain(sdUUID, spUUID)
        return {"uuidlist": self._volumes.volume_ids(repo, imgUUID or BLANK_UUID)}

    @verb()
    def getVolumeInfo(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str,
                      options: dict | None = None) -> dict:
        options_of(options)
        return {"info": self._volumes.info(self._locate(sdUUID, spUUID, imgUUID, volUUID))}

    @verb()
    def getVolumeSize(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str,
                      options: dict | None = None) -> dict:
        options_of(options)
        apparent, true = self._volumes.sizes(self._locate(sdUUID, spUUID, imgUUID, volUUID))
        return {"apparentsize": apparent, "truesize": true}

    @verb()
    def getVolumePath(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str,
                      options: dict | None = None) -> dict:
        options_of(options)
        found = self._locate(sdUUID, spUUID, imgUUID, volUUID)
        return {"path": found.repo.volume_path(found.volume)}

    @verb(mutating=True)
    def setVolumeDescription(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str, description: str,
                             options: dict | None = None) -> dict:
        options_of(options)
        self._volumes.relabel(self._locate(sdUUID, spUUID, imgUUID, volUUID), description=description)
        return {}

    @verb(mutating=True)
    def setVolumeLegality(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str, legality: str,
                          options: dict | None = None) -> dict:
        options_of(options)
        self._volumes.relabel(self._locate(sdUUID, spUUID, imgUUID, volUUID), legality=legality)
        return {}

    @verb(mutating=True)
    def extendVolume(self, sdUUID: str, spUUID: str, imgUUID: str, volumeUUID: str, size: int | str,
                     isShuttingDown: object = None, options: dict | None = None) -> dict:
        """size in MiB. On a block domain the volume's LV grows to that size (VDSM's thin provisioning: the
        VM's volume fills, its host asks for more); a file grows as it is written, so on file domains, as
        on VDSM's, the volume and size are checked and nothing else."""
        options_of(options)
        found = self._locate(sdUUID, spUUID, imgUUID, volumeUUID)
        mib = number("size", size)
        if mib <= 0:
            raise InvalidParameterException(f"size={size!r}: MiB, more than 0")
        if isinstance(found.repo, BlockRepository):
            found.repo.extend(found.volume, mib * MiB)
        return {}

    # -- use on this host ------------------------------------------------------------

    @verb()
    def refreshVolume(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str,
                      options: dict | None = None) -> dict:
        """A block volume active here is used at its LV's size now (another host may have extended it);
        nothing is cached about a file volume's size."""
        options_of(options)
        found = self._locate(sdUUID, spUUID, imgUUID, volUUID)
        if isinstance(found.repo, BlockRepository):
            found.repo.refresh_volume(found.volume)
        return {}

    @verb()
    def prepareVolume(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str, rw: bool | str = True,
                      options: dict | None = None) -> dict:
        """A file volume needs no activation; the volume is checked and its file must be there."""
        options_of(options)
        parse_bool("rw", rw)
        found = self._locate(sdUUID, spUUID, imgUUID, volUUID)
        if self._volumes.sizes(found) == ("0", "0"):
            found.repo.io.stat(found.repo.volume_path(found.volume))  # says which file is missing
        return {}

    @verb()
    def teardownVolume(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str, rw: bool | str = False,
                       options: dict | None = None) -> dict:
        options_of(options)
        parse_bool("rw", rw)
        self._locate(sdUUID, spUUID, imgUUID, volUUID)
        return {}

    @verb(mutating=True, name="prepareImage", when=_vdsm_form)
    def vdsm_prepareImage(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str = "",
                          options: dict | None = None) -> dict:
        """The chain ready for a VM: {path of volUUID (the leaf if left out), chain base first}.
        The image counts as in use until teardownImage, as the new API's prepareImage."""
        options_of(options)
        repo = self._domain(sdUUID, spUUID)
        image = self._volumes.image(repo, imgUUID)
        found = self._volumes.locate(repo, image.id, volUUID) if volUUID else self._volumes.locate(repo, image.id,
                                                                                                  image.top.id)
        self._volumes.check_legal(repo, image)
        self._engine.prepare(repo.id, image.id, readonly=True if image.kind == SNAPSHOT else None)
        chain = [{"domainID": repo.uuid, "imageID": image.id, "volumeID": vol.id, "volType": "path",
                  "path": repo.volume_path(vol)} for vol in reversed(image.volumes[found.index:])]
        return {"path": repo.volume_path(found.volume), "chain": chain}

    @verb(mutating=True, name="teardownImage", when=_vdsm_form)
    def vdsm_teardownImage(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str = "",
                           options: dict | None = None) -> dict:
        options_of(options)
        repo = self._domain(sdUUID, spUUID)
        image = self._volumes.image(repo, imgUUID)
        if volUUID:
            self._volumes.locate(repo, image.id, volUUID)
        self._engine.teardown(repo.id, image.id)
        return {}
