"""Fixes: the data half of every image operation, run as tasks.

A fix reads what to do from the image record (its `intent`, or `removed`),
so it can run again after a crash of this or any other host. Every step is
idempotent: it first looks whether its work is already done.

    create    make the disk's top volume; then, for strategy=performance, copy
              the base into it (degraded until then)
    snapshot  give the disk a new top volume over the snapshot's, then mark
              the snapshot complete
    copy      qemu-img convert the source (or only its difference from the
              base) into the new image's volume
    optimize  copy a degraded disk out of its base (in place: qemu-img rebase)
    clean     give back the space of a removed image, or of files no image owns
    merge     fold a removed snapshot into the images that read through it
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from hsm.errors import (
    AddTaskError,
    CopyImageError,
    HsmError,
    MergeSnapshotsError,
    TaskIdExists,
    TaskIdRequired,
    UnknownTask,
    VolumeCreationError,
    VolumeImageHasChildren,
    VolumeIsBusy,
)
from hsm.storage import qemuimg
from hsm.storage.image import DEGRADED, OPTIMIZED, Image, Volume
from hsm.storage.repository import VOLUMES, FileRepository
from hsm.tasks import EXCLUSIVE, SHARED, Step, StepContext, TaskKind, TaskManager
from hsm.tasks.manager import TRANSPARENT
from hsm.tasks.resources import IMAGE, REPOSITORY

log = logging.getLogger("hsm.storage.fixes")

PREFIX = "fix."
FIX_TYPES = {"create": "mend", "snapshot": "mend", "copy": "mend", "optimize": "optimize",
             "clean": "clean", "merge": "merge", "orphans": "clean"}
SAVE_PROGRESS_EVERY = 5.0   # seconds between writes of percentComplete to the repository


class Fixes:
    def __init__(self, engine) -> None:  # engine: hsm.storage.engine.Engine (imports point one way)
        self.engine = engine
        self._by_image: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()
        self._indexed = False
        self._reserved: set[str] = set()  # task ids handed to commits in flight

    # -- tasks ------------------------------------------------------------

    def register(self, tasks: TaskManager) -> None:
        self.tasks = tasks
        for name in FIX_TYPES:
            tasks.register(TaskKind(PREFIX + name, self._steps_of(name), self._resources_of(name)))

    def check_can_start(self, opts) -> None:
        """Fail before a commit, not after, when its fix could not be started."""
        if not opts.autoFix:
            return
        if self.tasks.mode == TRANSPARENT and not opts.taskId:
            raise TaskIdRequired("this image verb starts a fix: pass options.taskId, or options.autoFix=false")
        if not self.tasks.has_room():
            raise AddTaskError("the task queue is full; try again, or commit with options.autoFix=false")

    @contextlib.contextmanager
    def task_for(self, opts) -> Iterator[str]:
        """The id of the task a commit will start ('' with autoFix off), checked and held while it commits.

        The id goes into the image record with the intent, so that the task the
        client was told of is the one that runs, after a restart too. A caller's
        id already in use is refused before anything is written.
        """
        self.check_can_start(opts)
        if not opts.autoFix:
            yield ""
            return
        task_id = opts.taskId or str(uuid.uuid4())
        with self._lock:
            if task_id in self._reserved or self._known(task_id):
                raise TaskIdExists(task_id)
            self._reserved.add(task_id)
        try:
            yield task_id
        finally:
            with self._lock:
                self._reserved.discard(task_id)

    def _known(self, task_id: str) -> bool:
        try:
            self.tasks.get(task_id)
        except UnknownTask:
            return False
        return True

    def start(self, repo: FileRepository, fix: str, image_id: str, verb: str, task_id: str | None = None,
              extra: dict | None = None, persist: bool = True, waiting: bool = False) -> str:
        """Start a fix; one already active for the same image and kind is returned instead.

        `persist=False`: the task's id is in the image record with its intent, and
        resume() starts it again under that id after a crash (non-transparent mode).
        """
        if image_id:
            known = self._working(repo, image_id, fix)
            if known:
                return known
        args = {"repo": repo.uuid, "image": image_id, **(extra or {})}
        intent = repo.images[image_id].intent if image_id in repo.images else {}
        if fix == "create" and intent.get("optimize"):
            args["optimize"] = True  # its steps then include the copy of the base
        if fix == "snapshot" and intent.get("op") == "snapshot":
            args["disk"] = intent["disk"]  # locked with the snapshot
        if fix == "copy" and intent.get("op") == "copy":
            args.update(sourceRepo=intent["sourceRepo"], source=intent["source"])
        if fix == "merge" and image_id in repo.images:  # the images whose volumes it rewrites
            args["children"] = sorted(child.id for child in repo.dependents(repo.images[image_id]))
        touched = _images_touched(args)
        tags = [f"repository:{repo.uuid}"] + [f"image:{image}" for _, image in touched]
        task = self.tasks.start(PREFIX + fix, verb, args, tags=tags, task_id=task_id,
                                persist=persist or self.tasks.mode == TRANSPARENT, waiting=waiting)
        with self._lock:
            for key in touched:
                self._by_image.setdefault(key, set()).add(task.id)
        return task.id

    def start_after_commit(self, repo: FileRepository, fix: str, image_id: str, verb: str, task_id: str) -> None:
        try:
            self.start(repo, fix, image_id, verb, task_id=task_id, persist=False)
        except HsmError as e:  # the intent is durable: checkStorageRepository offers the fix again
            log.error("%s: committed %s but could not start its %s fix: %s", verb, image_id, fix, e)

    def active_on_image(self, repo: FileRepository, image_id: str) -> list[str]:
        self._index()
        with self._lock:
            ids = self._by_image.get((repo.uuid, image_id))
            if not ids:
                return []
            active = []
            for task_id in list(ids):
                try:
                    done = self.tasks.get(task_id).state.done
                except HsmError:
                    done = True
                if done:
                    ids.discard(task_id)
                else:
                    active.append(task_id)
            if not ids:
                del self._by_image[(repo.uuid, image_id)]
            return active

    def active_on_repository(self, repo: FileRepository) -> list[str]:
        tag = f"repository:{repo.uuid}"
        return [task.id for task in self.tasks.all() if tag in task.tags and not task.state.done]

    def _index(self) -> None:
        """Learn the fixes that recovery brought back, once."""
        if self._indexed:
            return
        with self._lock:
            for task in self.tasks.all():
                if not task.kind.startswith(PREFIX) or task.state.done:
                    continue
                for key in _images_touched(task.args):
                    self._by_image.setdefault(key, set()).add(task.id)
            self._indexed = True

    def resume(self, repo: FileRepository) -> int:
        """Start the fix of every pending intent and removal that no task works on (non-transparent mode)."""
        started = 0
        for image in self._pending_first(repo):
            fix = self.needed(repo, image)
            if fix and not self._working(repo, image.id, fix):
                # The id the commit handed out, unless a task ran under it already (and failed).
                task_id = image.task if image.task and not self._known(image.task) else None
                try:
                    self.start(repo, fix, image.id, image.verb or "connectStorageRepository", task_id=task_id,
                               persist=task_id is None)
                    started += 1
                except HsmError as e:
                    log.warning("Cannot resume the %s fix of %s: %s", fix, image.id, e)
        return started

    def _working(self, repo: FileRepository, image_id: str, fix: str) -> str:
        """The task of this fix working on the image, or '' (a merge that only names it as a child is not)."""
        return next((known for known in self.active_on_image(repo, image_id)
                     if self.tasks.get(known).kind == PREFIX + fix), "")

    @staticmethod
    def _pending_first(repo: FileRepository) -> list[Image]:
        """Images with a pending intent before removed ones: a merge may wait for a create it reads through."""
        return sorted(repo.images.values(), key=lambda image: image.removed)

    def recover_intents(self, repo: FileRepository) -> int:
        """After a start or a connect: the fixes of pending intents, as the task mode says."""
        return self.adopt(repo) if self.tasks.mode == TRANSPARENT else self.resume(repo)

    def adopt(self, repo: FileRepository) -> int:
        """Transparent mode: give back, in waitrecover, the tasks whose ids commits handed out but a
        crash cut off before they were written; the caller then says recoverTask or revertTask."""
        adopted = 0
        for image in self._pending_first(repo):
            fix = self.needed(repo, image)
            if fix and image.task and not self._known(image.task) and not self._working(repo, image.id, fix):
                try:
                    self.start(repo, fix, image.id, image.verb or "connectStorageRepository", task_id=image.task,
                               waiting=True)
                    adopted += 1
                except HsmError as e:
                    log.warning("Cannot give back task %s of %s: %s", image.task, image.id, e)
        return adopted

    @staticmethod
    def needed(repo: FileRepository, image: Image) -> str:
        """The fix an image's record asks for, or ''."""
        if image.removed:
            return "merge" if repo.dependents(image) else "clean"
        return image.intent.get("op", "")

    # -- steps ------------------------------------------------------------

    def _steps_of(self, fix: str) -> Callable[[dict], list[Step]]:
        def steps(args: dict) -> list[Step]:
            plan = {
                "create": [("create the volume", self._create_volume), ("mark usable", self._create_done)]
                + ([("copy the base in", self._optimize)] if args.get("optimize") else []),
                "snapshot": [("make the disk's new top", self._snapshot_overlay),
                             ("switch the disk", self._snapshot_switch), ("mark complete", self._snapshot_done)],
                "copy": [("copy the data", self._copy_data), ("mark complete", self._copy_done)],
                "optimize": [("copy the base in", self._optimize)],
                "clean": [("remove volumes", self._clean_volumes), ("remove the record", self._clean_record)],
                "merge": [("rebase the children", self._merge_rebase), ("update the children", self._merge_records),
                          ("remove volumes", self._clean_volumes), ("remove the record", self._clean_record)],
                "orphans": [("remove files", self._clean_files)],
            }[fix]
            return [Step(name, self._guarded(run), idempotent=True) for name, run in plan]
        return steps

    def _resources_of(self, fix: str) -> Callable[[dict], list[tuple[str, str, str]]]:
        def resources(args: dict) -> list[tuple[str, str, str]]:
            repo_uuid, image_id = args["repo"], args["image"]
            if fix in ("merge", "orphans"):
                return [(REPOSITORY, repo_uuid, EXCLUSIVE)]
            wanted = [(REPOSITORY, repo_uuid, SHARED), (IMAGE, f"{repo_uuid}/{image_id}", EXCLUSIVE)]
            if args.get("disk"):
                wanted.append((IMAGE, f"{repo_uuid}/{args['disk']}", EXCLUSIVE))
            if args.get("sourceRepo"):
                wanted += [(REPOSITORY, args["sourceRepo"], SHARED),
                           (IMAGE, f"{args['sourceRepo']}/{args['source']}", SHARED)]
            return wanted
        return resources

    def _guarded(self, run: Callable[[StepContext, FileRepository, Image | None], None]):
        """Run a step on its repository and image; a failure is kept as the image's lastError."""
        def step(ctx: StepContext) -> None:
            repo = self.engine.by_uuid(ctx.args["repo"])
            image = repo.images.get(ctx.args["image"]) if ctx.args["image"] else None
            if ctx.args["image"] and image is None:
                return  # the record is gone: a clean already finished this image
            if image is not None:
                image.stage = ctx.task.stage
            try:
                run(ctx, repo, image)
            except (HsmError, qemuimg.QemuImgError, OSError) as e:
                error = e if isinstance(e, HsmError) else _data_error(ctx.task.kind)(str(e))
                current = repo.images.get(ctx.args["image"]) if image is not None else None
                if current is not None:
                    self.update(repo, current, lastError=error.last_error())
                raise error from None
        return step

    def update(self, repo: FileRepository, image: Image, **changes: object) -> Image:
        """Apply `changes` to the record as it is now and write it; the index shows it once durable.

        Under the repository's commit lock: a removeImage committed meanwhile
        is kept, never overwritten by a fix holding an older copy.
        """
        with repo.lock:
            record = repo.images.get(image.id, image).copy()
            for name, value in changes.items():
                setattr(record, name, value)
            record.hostId = self.engine.host_id
            repo.save(record)
        return record

    def _progress(self, ctx: StepContext, repo: FileRepository, image: Image, low: int, high: int):
        last_saved = [time.monotonic()]
        last_logged = [time.monotonic()]

        def report(percent: float) -> None:
            ctx.check_stop()
            whole = int(low + (high - low) * percent / 100)
            ctx.progress(whole)
            if time.monotonic() - last_logged[0] >= self.engine.progress_interval:
                last_logged[0] = time.monotonic()
                log.info("%s of %s in %s: %d%% (stage %s)", ctx.task.kind.removeprefix(PREFIX), image.id, repo.id,
                         whole, ctx.task.stage)
            current = repo.images.get(image.id)  # the record in the index now (a save replaces it)
            if current is None:
                return
            current.percentComplete = whole
            if time.monotonic() - last_saved[0] >= SAVE_PROGRESS_EVERY:
                last_saved[0] = time.monotonic()
                self.update(repo, current, stage=ctx.task.stage)
        return report

    def _backing_name(self, image: Image, index: int) -> str | None:
        """The backing file name of the volume at `index` (relative: volumes share one folder)."""
        return image.volumes[index + 1].filename if index + 1 < len(image.volumes) else None

    # create -----------------------------------------------------------------

    def _create_volume(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if image.intent.get("op") != "create":
            return
        qemuimg.create(repo.volume_path(image.top), image.size, backing=self._backing_name(image, 0),
                       compat=self.engine.qcow2_compat)

    def _create_done(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if image.intent.get("op") != "create":
            return
        optimize = image.intent.get("optimize")
        self.update(repo, image, state=DEGRADED if optimize else OPTIMIZED, intent={"op": "optimize"} if optimize
                   else {}, percentComplete=-1 if optimize else 100, lastError={}, stage=ctx.task.stage)

    def _optimize(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if image.intent.get("op") != "optimize":
            return
        with self._rewriting(repo, [image.id], "it is optimized after teardownImage"):
            qemuimg.rebase(repo.volume_path(image.top), None, progress=self._progress(ctx, repo, image, 0, 99))
            self.update(repo, image, state=OPTIMIZED, intent={}, volumes=[image.top], percentComplete=100,
                        lastError={})

    @contextlib.contextmanager
    def _rewriting(self, repo: FileRepository, image_ids: list[str], wait: str) -> Iterator[None]:
        """Change these images' chains, none of them prepared now, nor prepared until the change is done.

        The check and the mark are one step under the repository's lock, which prepareImage takes too.
        """
        with repo.lock:
            for image_id in image_ids:
                if self.engine.is_prepared(repo, image_id):
                    raise VolumeIsBusy(f"{image_id} is prepared on this host; {wait}")
            repo.rewriting.update(image_ids)
        try:
            yield
        finally:
            with repo.lock:
                repo.rewriting.subtract(image_ids)
                for image_id in image_ids:
                    if repo.rewriting[image_id] <= 0:
                        del repo.rewriting[image_id]

    # snapshot ---------------------------------------------------------------

    def _snapshot_parts(self, repo: FileRepository, snapshot: Image) -> tuple[Image, str] | None:
        if snapshot.intent.get("op") != "snapshot":
            return None
        return repo.get(snapshot.intent["disk"]), snapshot.intent["top"]

    def _snapshot_overlay(self, ctx: StepContext, repo: FileRepository, snapshot: Image) -> None:
        parts = self._snapshot_parts(repo, snapshot)
        if parts is None or parts[0].top.id == parts[1]:
            return
        disk, top = parts
        qemuimg.create(repo.volume_path(Volume(top, disk.id)), disk.size, backing=snapshot.top.filename,
                       compat=self.engine.qcow2_compat)

    def _snapshot_switch(self, ctx: StepContext, repo: FileRepository, snapshot: Image) -> None:
        parts = self._snapshot_parts(repo, snapshot)
        if parts is None or parts[0].top.id == parts[1]:
            return
        disk, top = parts
        self.update(repo, disk, volumes=[Volume(top, disk.id), *snapshot.volumes], base=snapshot.id)

    def _snapshot_done(self, ctx: StepContext, repo: FileRepository, snapshot: Image) -> None:
        if snapshot.intent.get("op") == "snapshot":
            self.update(repo, snapshot, state=OPTIMIZED, intent={}, percentComplete=100, lastError={},
                       stage=ctx.task.stage)

    # copy ---------------------------------------------------------------------

    def _copy_data(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        intent = image.intent
        if intent.get("op") != "copy":
            return
        source_repo = self.engine.by_uuid(intent["sourceRepo"])
        source = source_repo.get(intent["source"])
        src = source_repo.volume_path(source.top)
        target = repo.volume_path(image.top)
        report = self._progress(ctx, repo, image, 0, 99)
        if not intent["base"]:
            qemuimg.convert(src, target, compat=self.engine.qcow2_compat, progress=report)
            return
        base_name = self._backing_name(image, 0)
        if source.volumes[1].image == intent["base"]:  # the source reads straight through the base
            qemuimg.convert(src, target, backing=base_name, compat=self.engine.qcow2_compat, progress=report)
            return
        # Deeper: copy what the top holds over the source's own next volume, then let a
        # safe rebase onto the target's base copy in whatever else differs.
        qemuimg.convert(src, target, backing=source_repo.volume_path(source.volumes[1]),
                        compat=self.engine.qcow2_compat, progress=self._progress(ctx, repo, image, 0, 50))
        qemuimg.rebase(target, base_name, progress=self._progress(ctx, repo, image, 50, 99))

    def _copy_done(self, ctx: StepContext, repo: FileRepository, image: Image) -> None:
        if image.intent.get("op") == "copy":
            self.update(repo, image, state=OPTIMIZED, intent={}, percentComplete=100, lastError={},
                       stage=ctx.task.stage)

    # clean and merge ------------------------------------------------------------

    def _clean_volumes(self, ctx: StepContext, repo: FileRepository, image: Image | None) -> None:
        if image is None or not image.removed:
            return
        if repo.dependents(image):
            raise VolumeImageHasChildren(f"{image.id}: images read through it; it needs a merge fix")
        self._check_unused(repo, image)
        for vol in image.own:
            repo.remove_file(f"{VOLUMES}/{vol.filename}")

    def _check_unused(self, repo: FileRepository, image: Image) -> None:
        """A removed image's volumes go only once no VM and no pending copy reads them."""
        if self.engine.is_prepared(repo, image.id):
            raise VolumeIsBusy(f"{image.id} is prepared on this host; its space comes back after teardownImage")
        waiting = self.engine.needed_by(repo, image)
        if waiting:
            raise VolumeIsBusy(f"{image.id}: the unfinished {waiting[0]} still reads it")

    def _clean_record(self, ctx: StepContext, repo: FileRepository, image: Image | None) -> None:
        if image is not None and image.removed:
            repo.forget(image.id)
            repo.keep_reserve()

    def _merge_rebase(self, ctx: StepContext, repo: FileRepository, snapshot: Image | None) -> None:
        if snapshot is None or not snapshot.removed:
            return
        below = snapshot.volumes[len(snapshot.own)] if len(snapshot.volumes) > len(snapshot.own) else None
        above: dict[str, Volume] = {}
        self._check_unused(repo, snapshot)
        children = repo.dependents(snapshot)
        for child in children:
            index = next(i for i, vol in enumerate(child.volumes) if vol.id == snapshot.top.id)
            if index > 0:
                above[child.volumes[index - 1].id] = child.volumes[index - 1]
        with self._rewriting(repo, [child.id for child in children], f"snapshot {snapshot.id} is merged after "
                             "teardownImage"):
            for vol in above.values():
                path = repo.volume_path(vol)
                if not repo.io.exists(path):  # gone behind hsmd's back: its image is reported broken
                    continue
                current = qemuimg.info(path).get("backing-filename", "")
                wanted = below.filename if below else ""
                if current != wanted:
                    log.info("Merging snapshot %s into volume %s", snapshot.id, vol.id)
                    qemuimg.rebase(path, wanted or None, progress=lambda percent: ctx.check_stop())

    def _merge_records(self, ctx: StepContext, repo: FileRepository, snapshot: Image | None) -> None:
        if snapshot is None or not snapshot.removed:
            return
        children = repo.dependents(snapshot)
        with self._rewriting(repo, [child.id for child in children], f"snapshot {snapshot.id} is merged after "
                             "teardownImage"):
            for child in children:
                volumes = [vol for vol in child.volumes if vol.image != snapshot.id]
                self.update(repo, child, volumes=volumes,
                            base=snapshot.base if child.base == snapshot.id else child.base)

    def _clean_files(self, ctx: StepContext, repo: FileRepository, image: None) -> None:
        for name in sorted(repo.unowned(set(ctx.args.get("files", [])))):
            repo.remove_file(name)


def _images_touched(args: dict) -> list[tuple[str, str]]:
    """(repository uuid, image id) of every image a fix's arguments name: its own, the disk it
    snapshots, the source it copies."""
    keys = [(args["repo"], args["image"]), (args["repo"], args.get("disk")),
            (args.get("sourceRepo"), args.get("source"))]
    keys += [(args["repo"], child) for child in args.get("children", [])]
    return [key for key in keys if key[0] and key[1]]


def _data_error(kind: str) -> type[HsmError]:
    return {PREFIX + "copy": CopyImageError, PREFIX + "merge": MergeSnapshotsError}.get(kind, VolumeCreationError)
