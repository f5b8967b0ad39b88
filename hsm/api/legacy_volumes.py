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
from hsm.errors import ImageExists, InvalidParameterException, VolumeAlreadyExists
from hsm.storage.domains import BLANK_UUID, Domains, check_uuid, number
from hsm.storage.engine import Engine
from hsm.storage.image import SNAPSHOT
from hsm.storage.options import ImageOptions, check_id
from hsm.storage.pools import Pools
from hsm.storage.repository import FileRepository
from hsm.storage.volumes import Located, Volumes
from hsm.tasks import Step, StepContext, TaskKind, TaskManager

DONE = "vdsmDone"  # the task a repeated create answers with: its work was done before


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
            self._volumes.copy(source.repo, source, target, dstImgUUID, dstVolUUID, description, volType, volFormat,
                               preallocate, opts)
        except ImageExists as e:
            raise VolumeAlreadyExists(f"{dstVolUUID}: {e.detail} with other arguments") from None
        return {"uuid": opts.taskId}

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
        """size in MiB. A volume in a file grows as it is written: on these domains, as on VDSM's file
        domains, there is nothing to allocate, so the volume and size are checked and nothing else."""
        options_of(options)
        self._locate(sdUUID, spUUID, imgUUID, volumeUUID)
        if number("size", size) <= 0:
            raise InvalidParameterException(f"size={size!r}: MiB, more than 0")
        return {}

    # -- use on this host ------------------------------------------------------------

    @verb()
    def refreshVolume(self, sdUUID: str, spUUID: str, imgUUID: str, volUUID: str,
                      options: dict | None = None) -> dict:
        """Nothing is cached about a file volume's size: the volume is checked, and that is all."""
        options_of(options)
        self._locate(sdUUID, spUUID, imgUUID, volUUID)
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
