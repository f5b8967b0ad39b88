"""Fixes: the data half of every image operation, run as tasks.

This module starts them (after a commit, from check, after a crash) and gives
them what they share: the record update under the commit lock, progress, and
the mark of chains being rewritten. Each kind of fix is a class of its own in
this package (base.Fix), listed in KINDS:

    create    make the disk's top volume; then, for strategy=performance, copy
              the base into it (degraded until then)                create.py
    snapshot  give the disk a new top volume over the snapshot's, then mark
              the snapshot complete                                 snapshot.py
    copy      qemu-img convert the source (or only its difference from the
              base) into the new image's volume                     copy.py
    optimize  copy a degraded disk out of its base (qemu-img rebase) create.py
    clean     give back the space of a removed image, or of files no
              image owns (orphans)                                  clean.py
    merge     fold a removed snapshot into the images that read through it
                                                                    merge.py
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

from hsm.errors import AddTaskError, HsmError, TaskIdExists, TaskIdRequired, UnknownTask, VolumeIsBusy
from hsm.storage import qemuimg
from hsm.storage.fixes.base import Fix, StepFunc
from hsm.storage.fixes.clean import CleanFix, OrphansFix
from hsm.storage.fixes.copy import CopyFix
from hsm.storage.fixes.create import CreateFix, OptimizeFix
from hsm.storage.fixes.merge import MergeFix
from hsm.storage.fixes.snapshot import SnapshotFix
from hsm.storage.image import Image
from hsm.storage.repository import FileRepository
from hsm.tasks import Step, StepContext, TaskKind, TaskManager
from hsm.tasks.manager import TRANSPARENT

log = logging.getLogger("hsm.storage.fixes")

F = TypeVar("F", bound=Fix)
PREFIX = "fix."
KINDS: tuple[type[Fix], ...] = (CreateFix, SnapshotFix, CopyFix, OptimizeFix, CleanFix, MergeFix, OrphansFix)
FIX_TYPES = {cls.name: cls.fix_type for cls in KINDS}  # what checkStorageRepository calls each
SAVE_PROGRESS_EVERY = 5.0   # seconds between writes of percentComplete to the repository


class Fixes:
    def __init__(self, engine) -> None:  # engine: hsm.storage.engine.Engine (imports point one way)
        self.engine = engine
        self._by_image: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()
        self._indexed = False
        self._reserved: set[str] = set()  # task ids handed to commits in flight
        self.kinds: dict[str, Fix] = {cls.name: cls(self) for cls in KINDS}

    # -- tasks ------------------------------------------------------------

    def register(self, tasks: TaskManager) -> None:
        self.tasks = tasks
        for fix in self.kinds.values():
            tasks.register(TaskKind(PREFIX + fix.name, self._steps_of(fix), fix.resources))

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
            self._claim(repo, image_id)
        args = {"repo": repo.uuid, "image": image_id, **(extra or {})}
        if image_id in repo.images:
            args.update(self.kinds[fix].extra_args(repo, repo.images[image_id]))
        touched = _images_touched(args)
        tags = [f"repository:{repo.uuid}"] + [f"image:{image}" for _, image in touched]
        task = self.tasks.start(PREFIX + fix, verb, args, tags=tags, task_id=task_id,
                                persist=persist or self.tasks.mode == TRANSPARENT, waiting=waiting)
        with self._lock:
            for key in touched:
                self._by_image.setdefault(key, set()).add(task.id)
        return task.id

    def worked_elsewhere(self, repo: FileRepository, image: Image) -> int:
        """Another host that works on the image (it wrote the record last and is alive in the repository's
        lockspace), or 0. Its work is left to it: any host takes it over once sanlock says it is dead."""
        return self._alive_other(repo, image.hostId)

    def _alive_other(self, repo: FileRepository, host_id: int) -> int:
        """`host_id` when it is another host alive in the repository's lockspace (or sanlock cannot say: then
        keep away from what it may be doing); 0 otherwise, and always on a repository only this host uses."""
        space = repo.lockspace
        if space is None or host_id in (0, self.engine.host_id):
            return 0
        try:
            return host_id if space.host_alive(host_id) else 0
        except Exception as e:
            log.warning("Cannot tell whether host %d is alive in %s: %s", host_id, repo.id, e)
            return host_id

    def _claim(self, repo: FileRepository, image_id: str) -> None:
        """On a shared repository, make this host the one working on the image, under the metadata-writer
        lease: two hosts never run fixes of one image at once (VolumeIsBusy while another host is alive)."""
        if repo.lockspace is None:
            return
        known = repo.images.get(image_id)
        if known is not None:  # at once, from the index: taking the lease may wait for that host to be dead
            self._refuse_elsewhere(repo, known)
        with repo.lock:
            image = repo.images.get(image_id)
            if image is None:
                return
            self._refuse_elsewhere(repo, image)
            if image.hostId != self.engine.host_id:
                log.info("Taking over %s in %s from host %d", image_id, repo.id, image.hostId)
                self.update(repo, image)

    def _refuse_elsewhere(self, repo: FileRepository, image: Image) -> None:
        other = self.worked_elsewhere(repo, image)
        if other:
            raise VolumeIsBusy(f"{image.id}: host {other} works on it; another host takes it over once "
                               "sanlock says that host is dead")

    def take_over(self, repo: FileRepository) -> int:
        """Start the fixes another host left when it died (the repository's monitor calls this)."""
        if repo.lockspace is None or self.tasks.mode == TRANSPARENT:
            return 0
        left = [image for image in self._pending_first(repo)
                if image.hostId not in (0, self.engine.host_id) and self.needed(repo, image)]
        started = 0
        for image in left:
            if self.worked_elsewhere(repo, image) or self._working(repo, image.id, self.needed(repo, image)):
                continue
            try:
                self.start(repo, self.needed(repo, image), image.id, image.verb or "connectStorageRepository")
                started += 1
            except HsmError as e:
                log.warning("Cannot take over the %s fix of %s: %s", self.needed(repo, image), image.id, e)
        return started

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
        pending = self._pending_first(repo)
        for done, image in enumerate(pending):
            fix = self.needed(repo, image)
            if fix and not self._working(repo, image.id, fix) and not self.worked_elsewhere(repo, image):
                # The id the commit handed out, unless a task ran under it already (and failed).
                task_id = image.task if image.task and not self._known(image.task) else None
                try:
                    self.start(repo, fix, image.id, image.verb or "connectStorageRepository", task_id=task_id,
                               persist=task_id is None)
                    started += 1
                except AddTaskError as e:  # one line, not one per record left (100,000 records: 100,000 lines)
                    left = sum(1 for other in pending[done:] if self.needed(repo, other))
                    log.warning("Resumed %d fixes in %s; %d more wait (%s): checkStorageRepository lists them",
                                started, repo.id, left, e)
                    break
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
        return image.intent.op if image.intent else ""

    def kind(self, cls: type[F]) -> F:
        """The registered fix of this class (a fix whose steps reuse another kind's)."""
        return next(fix for fix in self.kinds.values() if isinstance(fix, cls))

    # -- steps ------------------------------------------------------------

    def _steps_of(self, fix: Fix) -> Callable[[dict], list[Step]]:
        def steps(args: dict) -> list[Step]:
            return [Step(name, self._guarded(fix, run), idempotent=True) for name, run in fix.plan(args)]
        return steps

    def run_inline(self, ctx: StepContext, repo: FileRepository, fix_name: str, image_id: str) -> None:
        """Run a fix's steps now, inside the caller's task (a verb of many images, as VDSM's moveImage),
        instead of in a task of its own: the caller's task holds the locks and reports the progress."""
        fix = self.kinds[fix_name]
        image = repo.images.get(image_id)
        args = {"repo": repo.uuid, "image": image_id, **(fix.extra_args(repo, image) if image else {})}
        inner = _Inline(ctx, args)
        for _, run in fix.plan(args):
            self._guarded(fix, run)(inner)

    def _guarded(self, fix: Fix, run: StepFunc):
        """Run a step on its repository and image; a failure is kept as the image's lastError."""
        def step(ctx: StepContext) -> None:
            repo = self.engine.by_uuid(ctx.args["repo"])
            image = repo.images.get(ctx.args["image"]) if ctx.args["image"] else None
            if ctx.args["image"] and image is None:
                return  # the record is gone: a clean already finished this image
            if image is not None:
                image.stage = ctx.task.stage
            patient = self.engine.supervdsm.patient() if self.engine.supervdsm else contextlib.nullcontext()
            try:
                with patient:  # a task's privileged calls wait their turn behind others'
                    run(ctx, repo, image)
            except (HsmError, qemuimg.QemuImgError, OSError) as e:
                error = e if isinstance(e, HsmError) else fix.data_error(str(e))
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

    def progress(self, ctx: StepContext, repo: FileRepository, image: Image, low: int, high: int):
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

    @contextlib.contextmanager
    def rewriting(self, repo: FileRepository, image_ids: list[str], wait: str) -> Iterator[None]:
        """Change these images' chains, none of them prepared now, nor prepared until the change is done.

        The check and the mark are one step under the repository's index lock, which prepareImage takes too
        (inside its commit lock). On a shared repository the mark is also written in the records (under the
        metadata-writer lease), so that other hosts refuse to snapshot, prepare or remove them meanwhile.
        """
        with repo.index_lock:
            for image_id in image_ids:
                if self.engine.is_prepared(repo, image_id):
                    raise VolumeIsBusy(f"{image_id} is prepared on this host; {wait}")
            repo.rewriting.update(image_ids)
        try:
            if repo.lockspace is not None:
                self._mark_rewriting(repo, image_ids, wait)
            try:
                yield
            finally:
                if repo.lockspace is not None:
                    self._unmark_rewriting(repo, image_ids)
        finally:
            with repo.index_lock:
                repo.rewriting.subtract(image_ids)
                for image_id in image_ids:
                    if repo.rewriting[image_id] <= 0:
                        del repo.rewriting[image_id]

    def rewritten_elsewhere(self, repo: FileRepository, image: Image) -> int:
        """Another host, alive, whose merge or optimize changes the image's chain now; or 0."""
        return self._alive_other(repo, image.rewriting)

    def _mark_rewriting(self, repo: FileRepository, image_ids: list[str], wait: str) -> None:
        with repo.lock:
            images = [repo.images.get(image_id) for image_id in image_ids]
            for image in images:
                if image is None:
                    continue
                other = self.rewritten_elsewhere(repo, image)
                if other:
                    raise VolumeIsBusy(f"{image.id}: host {other} changes its chain now; {wait}")
                if repo.volume_leases is not None:
                    repo.volume_leases.check_unused(image.id)
            for image in images:
                if image is not None and image.rewriting != self.engine.host_id:
                    self.update(repo, image, rewriting=self.engine.host_id)

    def _unmark_rewriting(self, repo: FileRepository, image_ids: list[str]) -> None:
        try:
            with repo.lock:
                for image_id in image_ids:
                    image = repo.images.get(image_id)
                    if image is not None and image.rewriting == self.engine.host_id:
                        self.update(repo, image, rewriting=0)
        except HsmError as e:  # the mark of a host that goes on is cleared by its next fix of the image
            log.warning("Cannot clear the rewriting mark of %s in %s: %s", ", ".join(image_ids), repo.id, e)


class _Inline:
    """What a fix run inside another task sees: its own arguments, and that task's stage, progress and stop."""

    def __init__(self, outer: StepContext, args: dict) -> None:
        self.task = outer.task
        self.args = args
        self._outer = outer

    def check_stop(self) -> None:
        self._outer.check_stop()

    def progress(self, percent: int) -> None:
        self._outer.progress(percent)


def _images_touched(args: dict) -> list[tuple[str, str]]:
    """(repository uuid, image id) of every image a fix's arguments name: its own, the disk it
    snapshots, the source it copies."""
    keys = [(args["repo"], args["image"]), (args["repo"], args.get("disk")),
            (args.get("sourceRepo"), args.get("source"))]
    keys += [(args["repo"], child) for child in args.get("children", [])]
    return [key for key in keys if key[0] and key[1]]
