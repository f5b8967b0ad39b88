"""A model of the image engine, walked at random against a real hsmd with real qemu-img volumes.

A plain Python model holds every image the test was told exists and what it
must read (a pattern per slot). Each step applies one rule: create a disk
(empty or on a snapshot), snapshot, copy (whole or on a base snapshot, within
a repository or to the other one), remove, each with autoFix true or false
and strategy space or performance (a remove aims now and then at what an
unfinished intent needs); check a repository and run some of its fixes in any
order; write a pattern into a disk through prepareImage; keep an image
prepared and tear it down; kill -9 hsmd (at rest, or in the middle of a call)
and start it again; write a damaged image record of each kind in turn (an
admin deletes the oldest); delete a disk's volume behind hsmd's back; switch
to transparent task mode for a stretch of steps, where every verb that starts
a fix carries the caller's task id (some reused) and a restart leaves tasks
in waitrecover for recoverTask or revertTask. After every step:

- every acknowledged image not removed is listed, and once usable and idle
  reads exactly what the model says; no optimized or degraded image lacks a
  volume, and none that was usable turns broken;
- a refusal or a success is the one the model predicts (203 while an
  unfinished intent or a VM needs the image, 227 while it is not usable, 5007
  for a task id that exists); a call cut off by a kill never took effect
  where the model says it must be refused;
- no task id a client was given answers 401;
- nothing outside the repositories changes (sentinel folders beside them);
- a prepared image keeps its chain (never optimized or merged under the VM);
- damaged records are reported (broken with 207, or fixable: false) and
  never make hsmd touch files they name or may own;
- an image whose volume was deleted is broken (201) and listed by check with
  fixable: false;
- `settle` (some steps, and the end): check plus fixes converge, then every
  image is optimized, passes qemu-img check, its chain is what getImageInfo
  says, and no volume file or record is left that no image owns.

The walk is seeded: HSM_MODEL_SEED picks the seed (CI uses a fixed one) and
HSM_MODEL_STEPS the length; each step draws from its own Random(seed/step), so
a step draws the same numbers on a replay whatever timing did to the steps
before (what it does with them follows the model's state, which timing can
change: a fix done or not yet). A failure prints the seed, the replay command
and the step log.
HSM_MODEL_KEEP_GOING=1 records violations and walks on, failing at the end
with all of them (the model adopts what hsmd did).

The same walk runs on two localfs-1 repositories and on two block-1 ones
(test_image_model_walk[localfs-1] and [block-1]; BlockWalk): each a VG on
loop devices of its own, through a real supervdsmd, LVs used through loop
devices. What acts on storage behind hsmd's back is what a storage admin
could do there, as root: a disk's volume is deleted with lvremove; a damaged
record is a disk's record slot in the metadata LV overwritten (both copies)
with garbage through a second loop device over the PV, hsmd killed meanwhile
(that one kind only; check must list the slot, fixable: false, and the disk's
LV stays untouched; the admin's repair writes the slot back as it was, and
the disk must be listed and read as before); a restart connects
both repositories again by {vgName}. Images are read from the LVs' extents
on the PVs, volume by volume, without hsmd; settle runs qemu-img check on
prepareImage's path. Outside the repositories: a sentinel VG (tagged as a
block-1 repository that is not connected, with an LV named like a volume)
and every PV's VG stay as they were, and no LV appears in another VG. The
block-1 walk's default length (CI_STEPS_BLOCK) keeps it to about 3 minutes
on a busy 2-core machine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
import xmlrpc.client
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.parsers.expat import ExpatError

import pytest

from hsm.rpc.client import ServiceProxy
from hsm.storage import block
from hsm.storage.slots import SLOT as SLOT_BYTES
from tests.block_helpers import MetadataSlots, detach_loops_over, read_direct, write_through_loop, write_whole
from tests.images_helpers import MiB, backing_chain, code, local_path, ok, qemu_check, qemu_write
from tests.lvm_helpers import raw_lvm, real_lvm, report
from tests.waiting import wait_for

KiB = 1024
SLOT = 64 * KiB
SLOTS = (0, 320 * KiB, 832 * KiB, 1600 * KiB)  # all below the smallest size
SIZES = (2 * MiB, 3 * MiB, 4 * MiB)
MAX_LIVE = 12
MAX_DAMAGED = 3
DAMAGE_KINDS = ("garbage", "torn", "escape", "absolute", "badfields", "alias", "steal", "impostor")
REPOS = ("local", "second")
DISK, SNAPSHOT = "disk", "snapshot"
PENDING, INFLIGHT, DONE = "pending", "inflight", "done"  # an intent: not started, maybe running, complete
BUSY, NOT_READY, UNREADABLE, UNKNOWN_TASK, MISSING_VOLUME = 203, 227, 207, 401, 201
TASK_ID_EXISTS, TASK_STATE = 5007, 410
IMAGE_EXISTS, BAD_PARAMETER, NOT_A_CHAIN, INVALID_FIX = 5010, 1000, 262, 5013
CRASHED = (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError, ExpatError)
CI_SEED = 20261201
CI_STEPS = 250
CI_STEPS_BLOCK = 250  # block-1: about 2 minutes here (LVM, loop devices, supervdsmd), under 3 on a busy 2-core machine
WAIT = 180.0  # seconds any one wait may take on a busy machine


class Violation(AssertionError):
    pass


@dataclass
class Img:
    name: str                   # short, for the step log: d3, s4, c5
    id: str
    repo: str
    kind: str
    size: int
    data: list[int]             # the pattern each slot reads (0: zeros)
    chain: list[str]            # snapshots in the same repository it reads through, nearest first
    op: str                     # the intent it was committed with: create, snapshot, copy
    phase: str
    performance: bool = False   # a disk on a snapshot, to be copied out of it
    source: tuple[str, str] | None = None  # a copy's source
    base: str = ""              # a copy's base snapshot
    disk: str = ""              # a snapshot's disk
    seen_usable: bool = False
    tainted: bool = False       # read wrong once (keep-going mode): its data is not checked again

    @property
    def key(self) -> tuple[str, str]:
        return self.repo, self.id

    @property
    def label(self) -> str:
        return f"{self.repo}/{self.name}"


@dataclass
class Op:
    """One verb call with the answers the model allows and what a success changes."""
    text: str
    verb: str
    args: tuple
    must: set[int] = field(default_factory=set)   # refusals the model requires (any one of them)
    maybe: set[int] = field(default_factory=set)  # refusals timing allows
    apply: Callable[[dict], None] | None = None
    task_id: str = ""             # the caller's task id (transparent mode): a success starts that task
    new: Img | None = None        # the image a success makes
    removes: Img | None = None    # the image a success removes
    why: list[str] = field(default_factory=list)  # what the model expects a refusal for

    def allowed(self) -> set[int]:
        return self.must | self.maybe if self.must else {0} | self.maybe


@dataclass
class Prepared:
    path: str
    chain: list[str]


def need(img: Img, must: set[int], maybe: set[int], refusal: int) -> None:
    """`refusal` is required while img's intent has not started, possible while it may run."""
    if img.phase == PENDING:
        must.add(refusal)
    elif img.phase == INFLIGHT:
        maybe.add(refusal)


def contents(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def tree(folder: str) -> dict[str, bytes]:
    found = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(top, name)
            found[os.path.relpath(path, folder)] = b"" if os.path.isdir(path) else contents(path)
    return found


def qemu_slots(path: str, data: list[int]) -> str:
    """'' when the image reads `data` (a pattern per slot); else what qemu-io said. `path`: a qcow2 file, or
    a json: filename that names its driver."""
    argv = ["qemu-io", "-r", "-U"] + ([] if path.startswith("json:") else ["-f", "qcow2"])
    for offset, pattern in zip(SLOTS, data, strict=True):
        argv += ["-c", f"read -P {pattern} {offset} {SLOT}"]
    done = subprocess.run(argv + [path], capture_output=True, text=True)
    if done.returncode != 0 or "fail" in done.stdout.lower():
        return (done.stdout + done.stderr).strip()
    return ""


class Walk:
    """The walk on two localfs-1 repositories; what touches storage behind hsmd's back is in methods of its own
    (setup, connect_again, record_stored, missing_volumes, top_volume, read_data, delete_volume, rule_damage,
    repair, check_outside, check_chain, check_owned), which BlockWalk does on LVM."""

    repos = REPOS
    test_id = "test_image_model_walk[localfs-1]"

    def __init__(self, daemon, root: str, seed: int, steps: int, keep_going: bool = False) -> None:
        self.daemon, self.root, self.seed, self.steps, self.keep_going = daemon, root, seed, steps, keep_going
        self.paths = {"local": local_path(daemon), "second": os.path.join(root, "repos", "second")}
        self.sentinels = [os.path.join(daemon.state_dir, "sentinel"), os.path.join(root, "repos", "sentinel")]
        self.images: dict[tuple[str, str], Img] = {}
        self.removed: dict[tuple[str, str], Img] = {}    # acknowledged removes whose record may still be there
        self.prepared: dict[tuple[str, str], Prepared] = {}
        self.damaged: dict[tuple[str, str], str] = {}   # record file id -> what was wrong with it
        self.marks: dict[tuple[str, str], str] = {}     # damaged record -> what check's description names it by
        self.protected: dict[str, bytes] = {}           # files a damaged record names: they must survive
        self.strays: set[tuple[str, str]] = set()        # listed without the model knowing them (reported once)
        self.unreported: set[tuple[str, str]] = set()    # damaged records found not reported (reported once)
        self.tasks: dict[str, int] = {}                  # every task id a client saw -> the step it was seen
        self.transparent = False                         # setTaskMode transparent: verbs carry the caller's ids
        self.transparent_until = -1                      # the step the transparent stretch ends at
        self.lost: set[tuple[str, str]] = set()          # images whose volume the test deleted behind hsmd's back
        self.damaged_files: dict[tuple[str, str], list[str]] = {}  # damaged record -> files the test made for it
        self.damage_kinds: Counter[str] = Counter()      # damaged records written, by kind
        self.log: list[str] = []
        self.violations: list[str] = []
        self.stats: Counter[str] = Counter()            # what the walk did: verb -> code, reads, restarts
        self.step = -1
        self.names = 0
        self.patterns = 0
        self.proxy = None

    # -- the walk ------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        print(f"image model: seed {self.seed}, {self.steps} steps")
        try:
            self.setup()
            rules = [(self.rule_create, 14), (self.rule_snapshot, 12), (self.rule_copy, 10), (self.rule_remove, 10),
                     (self.rule_remove_prepared, 3), (self.rule_fix_some, 7), (self.rule_settle, 2),
                     (self.rule_write, 12), (self.rule_prepare, 4), (self.rule_teardown, 5),
                     (self.rule_restart, 4), (self.rule_kill_mid_call, 5), (self.rule_damage, 3),
                     (self.rule_lose_volume, 2), (self.rule_task_mode, 2), (self.rule_remove_needed, 3)]
            for step in range(self.steps):
                self.step = step
                rng = random.Random(f"{self.seed}/{self.step}")
                if self.transparent and step >= self.transparent_until:
                    self.set_task_mode(False)
                rule = rng.choices([r for r, _ in rules], [w for _, w in rules])[0]
                rule(rng)
                self.check_step()
            self.step = self.steps
            self.note("final settle")
            self.settle(random.Random(f"{self.seed}/end"), teardown=True)
        except Exception as e:
            raise AssertionError(self.report(f"{type(e).__name__}: {e}")) from e
        print("\n".join(self.log))
        print(", ".join(f"{what}: {n}" for what, n in sorted(self.stats.items())))
        print(f"image model: seed {self.seed} walked {self.steps} steps in {time.monotonic() - started:.0f} s")
        if self.violations:
            raise AssertionError(self.report(f"{len(self.violations)} violations"))

    def report(self, what: str) -> str:
        names = ", ".join(f"{img.name}={img.id}" for img in [*self.images.values(), *self.removed.values()])
        return "\n".join([
            f"image model failed at step {self.step}: {what}",
            f"replay: HSM_MODEL_SEED={self.seed} HSM_MODEL_STEPS={self.steps} "
            f".venv/bin/python -m pytest 'tests/test_image_model.py::{self.test_id}'",
            f"hsmd log: {self.daemon.log_path}", *self.describe(), "violations:", *self.violations, "steps:",
            *self.log,
            f"ids: {names}", f"damaged records: {self.damaged}"])

    def describe(self) -> list[str]:
        return [f"repositories: {self.paths}"]

    def note(self, line: str) -> None:
        self.log.append(f"{self.step:4d} {line}")

    def violate(self, what: str, detail: str) -> None:
        line = f"step {self.step}: {what}: {detail}"
        self.log.append(f"     !! {what}: {detail}")
        if not self.keep_going:
            raise Violation(line)
        self.violations.append(line)

    def setup(self) -> None:
        for folder in self.sentinels:
            os.makedirs(os.path.join(folder, "nested"), exist_ok=True)
            for name in ("victim.qcow2", "victim-abs.qcow2", "nested/keep"):
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(f"{name}: outside every repository\n".encode())
        os.makedirs(self.paths["second"])
        self.outside = {folder: tree(folder) for folder in self.sentinels}
        self.daemon.start()
        self.proxy = self.daemon.proxy(timeout=60)
        params = {"path": self.paths["second"]}
        ok(self.proxy.createStorageRepository("localfs-1", params, {}))
        ok(self.proxy.connectStorageRepository("second", "localfs-1", params, {}))

    def connect_again(self) -> None:
        """After a start: connect what hsmd does not connect by itself ('local' is its built-in one)."""
        params = {"path": self.paths["second"]}
        answer = self.proxy.connectStorageRepository("second", "localfs-1", params, {})
        if code(answer) != 0:
            self.violate("the second repository did not connect again", str(answer))

    # -- storage, as an admin sees it (behind hsmd's back) ----------------------------

    def record_stored(self, repo: str, image_id: str) -> bool:
        """Whether the repository still holds the image's record (a removed image's, until reclaimed)."""
        return os.path.exists(os.path.join(self.paths[repo], "images", image_id + ".json"))

    def missing_volumes(self, repo: str, info: dict) -> list[str]:
        return [v["path"] for v in info["volumes"] if not os.path.exists(v["path"])]

    def top_volume(self, repo: str, info: dict) -> str:
        """What qemu opens to look at the image's top volume without hsmd (a file: its chain follows by the
        backing names in it; a map tells its own clusters at depth 0)."""
        return info["volumes"][0]["path"]

    def read_data(self, img: Img, info: dict) -> str:
        """'' when the image reads what the model says; else what qemu-io said."""
        return qemu_slots(self.top_volume(img.repo, info), img.data)

    def delete_volume(self, repo: str, info: dict) -> str:
        """Delete the image's top volume behind hsmd's back: its name, or '' when it is not there."""
        path = info["volumes"][0]["path"]
        if not os.path.exists(path):
            return ""
        os.remove(path)
        return os.path.basename(path)

    # -- the model -------------------------------------------------------------

    def live(self, repo: str | None = None, kind: str | None = None) -> list[Img]:
        return [img for img in self.images.values() if (repo is None or img.repo == repo)
                and (kind is None or img.kind == kind)]

    @staticmethod
    def new_id(rng: random.Random) -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def name(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    def add(self, img: Img) -> None:
        self.removed.pop(img.key, None)
        self.images[img.key] = img
        self.learn_tasks(img)

    def learn_tasks(self, img: Img) -> None:
        answer = self.proxy.getImageStatus(img.repo, img.id)
        if code(answer) == 0:
            for task_id in answer["image"]["tasks"]:
                self.tasks.setdefault(task_id, self.step)

    def chosen(self, rng: random.Random, options: list):
        return rng.choice(options) if options else None

    def options(self, rng: random.Random, auto_fix: bool | None = None) -> dict:
        opts = {"autoFix": rng.random() < 0.7, "strategy": rng.choice(["space", "performance"])}
        if auto_fix is not None:
            opts["autoFix"] = auto_fix
        return opts

    def give_task_id(self, rng: random.Random, opts: dict, reuse: bool = True) -> bool:
        """Transparent mode: a verb that starts a fix carries the caller's task id; now and then one that
        exists already (True), which must be refused (5007) before anything is written."""
        if not self.transparent or not opts.get("autoFix", True):
            return False
        if reuse and self.tasks and rng.random() < 0.25:
            opts["taskId"] = rng.choice(sorted(self.tasks))
            return True
        opts["taskId"] = self.new_id(rng)
        return False

    def take_task_id(self, op: Op, reused: bool) -> Op:
        task_id = op.args[-1].get("taskId", "")
        if reused:
            op.must.add(TASK_ID_EXISTS)
            op.why.append(f"task {task_id} exists")
        else:
            op.task_id = task_id
        return op

    # -- planning a verb ---------------------------------------------------------

    def plan_create(self, rng: random.Random, caller_id: bool = False, auto_fix: bool | None = None,
                    on_snapshot: bool = False) -> Op | None:
        repo = rng.choice(self.repos)
        snapshots = self.live(repo, SNAPSHOT)
        if on_snapshot:  # a complete one, in either repository
            snapshots = [s for s in self.live(kind=SNAPSHOT) if s.phase == DONE]
        base = self.chosen(rng, snapshots) if rng.random() < 0.6 or on_snapshot else None
        repo = base.repo if base else repo
        size = max(rng.choice(SIZES), base.size if base else 0)
        opts = self.options(rng, auto_fix)
        new_id = self.new_id(rng) if caller_id else ""
        if new_id:
            opts["imageId"] = new_id
        reused = self.give_task_id(rng, opts)
        op = Op(f"createVirtualDisk {repo} {size // MiB}M base={base.label if base else '-'} {opts}",
                "createVirtualDisk", (repo, str(size), base.id if base else "", {}, opts))
        if base:
            need(base, op.must, op.maybe, NOT_READY)
        disk = Img(self.name("d"), new_id, repo, DISK, size, list(base.data) if base else [0] * len(SLOTS),
                   [base.id, *base.chain] if base else [], "create", INFLIGHT if opts["autoFix"] else PENDING,
                   performance=bool(base) and opts["strategy"] == "performance")

        def apply(answer: dict) -> None:
            disk.id = answer["imageId"]
            self.add(disk)
        op.apply, op.new = apply, disk
        return self.take_task_id(op, reused)

    def plan_snapshot(self, rng: random.Random, caller_id: bool = False) -> Op | None:
        disk = self.chosen(rng, [d for d in self.live(kind=DISK) if d.key not in self.prepared])
        if disk is None:
            return None
        opts = self.options(rng)
        new_id = self.new_id(rng) if caller_id else ""
        if new_id:
            opts["imageId"] = new_id
        reused = self.give_task_id(rng, opts)
        op = Op(f"createSnapshot {disk.label} {opts}", "createSnapshot", (disk.repo, disk.id, {}, opts))
        need(disk, op.must, op.maybe, NOT_READY)
        if disk.phase == INFLIGHT or disk.performance and disk.phase != DONE:
            op.maybe.add(BUSY)  # its own fix may be running
        for other in self.images.values():
            if other.op == SNAPSHOT and other.key != disk.key and (other.repo, other.disk) == disk.key:
                need(other, op.must, op.maybe, BUSY)  # a snapshot of it not complete
            if other.source == disk.key and other.phase == INFLIGHT:
                op.maybe.add(BUSY)  # a copy may be reading it
        for below in disk.chain:
            if (disk.repo, below) in self.removed:
                need(self.removed[(disk.repo, below)], op.must, op.maybe, BUSY)  # not merged yet
        snapshot = Img(self.name("s"), new_id, disk.repo, SNAPSHOT, disk.size, list(disk.data), list(disk.chain),
                       SNAPSHOT, INFLIGHT if opts["autoFix"] else PENDING, disk=disk.id)

        def apply(answer: dict) -> None:
            snapshot.id = answer["imageId"]
            disk.chain = [snapshot.id, *disk.chain]
            self.add(snapshot)
        op.apply, op.new = apply, snapshot
        return self.take_task_id(op, reused)

    def plan_copy(self, rng: random.Random, caller_id: bool = False, auto_fix: bool | None = None,
                  ready: bool = False) -> Op | None:
        source = self.chosen(rng, [i for i in self.live() if i.phase == DONE] if ready else self.live())
        if source is None:
            return None
        holding = [repo for repo in self.repos if any((repo, b) in self.images for b in source.chain)]
        target = rng.choice(holding if holding and rng.random() < 0.5 else self.repos)  # often: one a space copy uses
        bases = [b for b in source.chain if (source.repo, b) in self.images and (target, b) in self.images]
        base = self.images[(target, rng.choice(bases))] if bases and rng.random() < 0.6 else None
        opts = {**self.options(rng, auto_fix), "imageHints": {source.id: source.repo}}
        new_id = source.id if source.kind == SNAPSHOT else self.new_id(rng) if caller_id else ""
        if new_id and source.kind == DISK:
            opts["imageId"] = new_id
        reused = self.give_task_id(rng, opts)
        op = Op(f"copyImage {source.label} -> {target} base={base.label if base else '-'} {opts}", "copyImage",
                (target, source.id, base.id if base else "", {}, opts))
        need(source, op.must, op.maybe, NOT_READY)
        if base:
            need(base, op.must, op.maybe, NOT_READY)
            need(base, op.must, op.maybe, BAD_PARAMETER)
            if source.performance and source.phase != DONE:
                op.maybe.add(NOT_A_CHAIN)  # its optimize may have copied it out of the base
        held = self.images.get((target, source.id)) if source.kind == SNAPSHOT else None
        if held is not None:  # already there: success with the same id, nothing else
            op.must.clear()
            if source.phase != DONE:
                op.maybe.add(NOT_READY)

            def same(answer: dict) -> None:
                if answer["imageId"] != source.id:
                    self.violate("a snapshot copied where it is changed its id", f"{source.id} -> {answer['imageId']}")
            op.apply = same
            return op
        if source.kind == SNAPSHOT and (target, source.id) in self.removed:
            op.maybe |= {IMAGE_EXISTS, BUSY}  # its removed record may still be there
        copy = Img(self.name("c"), new_id, target, source.kind, source.size, list(source.data),
                   [base.id, *base.chain] if base else [], "copy", INFLIGHT if opts["autoFix"] else PENDING,
                   source=source.key, base=base.id if base else "")
        # strategy=space without a base: a copy over the nearest snapshot below the source that the target holds
        held = [] if base or opts["strategy"] != "space" else \
            [self.images[(target, b)] for b in source.chain if (target, b) in self.images]

        def apply(answer: dict) -> None:
            if source.kind == SNAPSHOT and answer["imageId"] != source.id:
                self.violate("a copied snapshot changed its id", f"{source.id} -> {answer['imageId']}")
            copy.id = answer["imageId"]
            if held:
                # a disk on a snapshot copied out of it (performance) may stand alone already: its chain is gone
                self.judge_held_base(copy, source, held)
            self.add(copy)
        op.apply, op.new = apply, copy
        return self.take_task_id(op, reused)

    def judge_held_base(self, copy: Img, source: Img, held: list[Img]) -> None:
        """A space copy goes over the nearest of `held` that is usable now and that the source still reads
        through: one whose fix is done, or a nearer one whose fix may be done or that may be gone from the
        source's chain (a snapshot removed there may be merged already; a disk copied out of its snapshot
        may stand alone already); none only when any of them may be."""
        may_stand_alone = source.performance and source.phase != DONE
        allowed = []
        for snapshot in held:
            allowed.append(snapshot.id)
            if snapshot.phase == DONE and not may_stand_alone and (source.repo, snapshot.id) not in self.removed:
                break
        else:
            allowed.append("")
        chosen = ok(self.proxy.getImageInfo(copy.repo, copy.id))["image"]["baseSnapshotId"]
        if chosen not in allowed:
            self.violate("a space copy is not over the nearest usable snapshot the target holds",
                         f"{copy.label} over {chosen or 'nothing'}, the model allows {allowed}")
        if chosen in allowed and chosen:
            self.stats["space copies over a held snapshot"] += 1
            base = self.images[(copy.repo, chosen)]
            copy.base, copy.chain = chosen, [chosen, *base.chain]

    def plan_remove(self, rng: random.Random, target: Img | None = None, reuse: bool = True,
                    auto_fix: bool | None = None) -> Op | None:
        target = target or self.chosen(rng, self.live())
        if target is None:
            return None
        opts = {"autoFix": rng.random() < 0.7 if auto_fix is None else auto_fix}
        reused = self.give_task_id(rng, opts, reuse)
        op = Op(f"removeImage {target.label} {opts}", "removeImage", (target.repo, target.id, opts))
        if target.key in self.prepared:
            op.must.add(BUSY)
            op.why.append("prepared")
        if target.phase != DONE:
            op.maybe.add(BUSY)  # its own fix may be running, or its snapshot is not complete
        for other in self.images.values():
            if other.key == target.key or other.phase == DONE:
                continue
            reads = other.repo == target.repo and target.id in other.chain
            if reads or other.source == target.key or (other.repo, other.disk) == target.key:
                need(other, op.must, op.maybe, BUSY)
                op.why.append(f"{other.phase} {other.op} of {other.label} needs it")
            elif other.source and other.source[0] == target.repo and target.id in self.chain_of(other.source):
                op.maybe.add(BUSY)  # below the source of an unfinished copy
        for gone in self.removed.values():
            if gone.repo == target.repo and target.id in gone.chain:
                op.maybe.add(BUSY)
            if gone.repo == target.repo and gone.id in target.chain and gone.phase == INFLIGHT:
                op.maybe.add(BUSY)  # the merge of a removed snapshot below it may be rebasing it

        def apply(answer: dict) -> None:
            del self.images[target.key]
            self.prepared.pop(target.key, None)
            target.phase = INFLIGHT if opts["autoFix"] else PENDING
            self.removed[target.key] = target
        op.apply, op.removes = apply, target
        return self.take_task_id(op, reused)

    def chain_of(self, key: tuple[str, str]) -> list[str]:
        img = self.images.get(key) or self.removed.get(key)
        return img.chain if img else []

    def plan_prepare(self, img: Img) -> Op:
        op = Op(f"prepareImage {img.label}", "prepareImage", (img.repo, img.id, {}))
        need(img, op.must, op.maybe, NOT_READY)
        if img.phase == INFLIGHT:
            op.maybe.add(BUSY)
        if img.performance and img.phase != DONE:
            op.maybe.add(BUSY)  # being optimized
        gone = [self.removed[(img.repo, below)] for below in img.chain if (img.repo, below) in self.removed]
        if any(g.phase == INFLIGHT for g in gone):
            op.maybe.add(BUSY)  # the merge of a removed snapshot below it may be changing its chain now
        for other in self.images.values():
            if other.op == SNAPSHOT and other.key != img.key and (other.repo, other.disk) == img.key:
                need(other, op.must, op.maybe, BUSY)

        def apply(answer: dict) -> None:
            info = ok(self.proxy.getImageInfo(img.repo, img.id))["image"]
            if answer["path"] != info["volumes"][0]["path"]:
                self.violate("prepareImage gave another path than the top volume", f"{answer['path']} {info}")
            self.prepared[img.key] = Prepared(answer["path"], self.files_of(answer["path"]))
        op.apply = apply
        return op

    def plan_fix(self, rng: random.Random) -> Op | None:
        repo = rng.choice(self.repos)
        entries = [e for e in self.check(repo) if e.get("fix")]
        entry = self.chosen(rng, entries)
        if entry is None:
            return None
        return self.fix_op(repo, entry, rng)

    def fix_op(self, repo: str, entry: dict, rng: random.Random) -> Op:
        key = (repo, entry["imageId"])
        img = self.images.get(key) or self.removed.get(key)
        opts = {"taskId": self.new_id(rng)} if self.transparent else {}  # a fix already running answers its own
        op = Op(f"fixStorageRepository {repo} {entry['type']} {img.label if img else entry['imageId'] or '-'}",
                "fixStorageRepository", (repo, entry["fix"], opts), maybe={INVALID_FIX})

        def apply(answer: dict) -> None:
            self.tasks.setdefault(answer["taskId"], self.step)
            if img is not None and img.phase == PENDING:
                img.phase = INFLIGHT
        op.apply = apply
        return op

    # -- running a verb ----------------------------------------------------------

    def perform(self, op: Op | None) -> dict | None:
        if op is None:
            return None
        return self.judge(op, getattr(self.proxy, op.verb)(*op.args))

    def judge(self, op: Op, answer: dict) -> dict:
        result = code(answer)
        self.stats[f"{op.verb} -> {result}"] += 1
        self.note(f"{op.text} -> {result}" + (f" ({op.new.name})" if op.new and result == 0 else ""))
        if result not in op.allowed():
            self.violate("unexpected answer", f"{op.text}: {result} {answer['status']['message']!r}, "
                                              f"the model allows {sorted(op.allowed())} {'; '.join(op.why)}")
        if result == 0 and op.task_id:
            self.tasks.setdefault(op.task_id, self.step)
        if result == 0 and op.apply:
            op.apply(answer)
        return answer

    # -- rules ---------------------------------------------------------------------

    def rule_create(self, rng: random.Random) -> None:
        if len(self.images) >= MAX_LIVE:
            return self.rule_remove(rng)
        self.perform(self.plan_create(rng))

    def rule_snapshot(self, rng: random.Random) -> None:
        if len(self.images) >= MAX_LIVE:
            return self.rule_remove(rng)
        self.perform(self.plan_snapshot(rng))

    def rule_copy(self, rng: random.Random) -> None:
        if len(self.images) >= MAX_LIVE:
            return self.rule_remove(rng)
        self.perform(self.plan_copy(rng))

    def rule_remove(self, rng: random.Random) -> None:
        needed = self.needed() if rng.random() < 0.4 else []
        self.perform(self.plan_remove(rng, self.chosen(rng, needed)))

    def rule_remove_needed(self, rng: random.Random) -> None:
        """Remove what an intent not yet started needs (a snapshot a pending disk or copy reads through, a
        copy's source, the disk a snapshot is of): refused, 203. Commits such an intent first (autoFix
        false: a disk on a snapshot, or a copy) when there is none."""
        if not self.pending_needs() and len(self.images) < MAX_LIVE:
            plan = functools.partial(self.plan_copy, ready=True) if rng.random() < 0.5 else \
                functools.partial(self.plan_create, on_snapshot=True)
            self.perform(plan(rng, auto_fix=False))
        needs = self.pending_needs()
        if needs:
            needer = rng.choice(sorted(needs))
            self.perform(self.plan_remove(rng, self.images[rng.choice(sorted(needs[needer]))]))

    def pending_needs(self) -> dict[tuple[str, str], set[tuple[str, str]]]:
        """Images whose intent has not started -> the live images it needs (what it reads through, its source,
        the disk it snapshots); a snapshot below a copy's source may go (its merge keeps the source whole)."""
        needs = {}
        for img in self.images.values():
            if img.phase == PENDING:
                wanted = {(img.repo, below) for below in img.chain} | ({(img.repo, img.disk)} if img.disk else set())
                if img.source:
                    wanted.add(img.source)
                if wanted & set(self.images):
                    needs[img.key] = wanted & set(self.images)
        return needs

    def needed(self) -> list[Img]:
        """Live images an unfinished intent reads: what it is made on, its source, and the source's chain."""
        keys: set[tuple[str, str]] = set()
        for img in self.images.values():
            if img.phase == DONE:
                continue
            keys |= {(img.repo, below) for below in img.chain} | ({(img.repo, img.disk)} if img.disk else set())
            if img.source:
                keys |= {img.source} | {(img.source[0], below) for below in self.chain_of(img.source)}
        return [self.images[key] for key in sorted(keys) if key in self.images]

    def rule_remove_prepared(self, rng: random.Random) -> None:
        target = self.chosen(rng, sorted(self.prepared))
        if target is not None:
            self.perform(self.plan_remove(rng, self.images[target]))

    def rule_fix_some(self, rng: random.Random) -> None:
        repo = rng.choice(self.repos)
        entries = [e for e in self.check(repo) if e.get("fix")]
        rng.shuffle(entries)
        for entry in entries[:rng.randint(1, max(1, len(entries)))]:
            self.perform(self.fix_op(repo, entry, rng))

    def rule_settle(self, rng: random.Random) -> None:
        self.settle(rng, teardown=rng.random() < 0.5)

    def rule_task_mode(self, rng: random.Random) -> None:
        """setTaskMode transparent for a stretch of steps: every verb that starts a fix then carries the
        caller's task id (some of them reused); non-transparent again after it."""
        if not self.transparent:
            self.transparent_until = self.step + rng.randint(10, 30)
            self.set_task_mode(True)

    def set_task_mode(self, transparent: bool) -> None:
        mode = "transparent" if transparent else "non-transparent"
        self.judge(Op(f"setTaskMode {mode}", "setTaskMode", (mode,)), self.proxy.setTaskMode(mode))
        self.transparent = transparent

    def recover_waiting(self) -> None:
        """After a restart, the tasks waiting in waitrecover (transparent ones): recoverTask, or now and then
        revertTask (the intent then stays for check to offer again)."""
        rng = random.Random(f"{self.seed}/{self.step}/recover")
        statuses = ok(self.proxy.getAllTasksStatuses())["allTasksStatus"]
        for task_id in sorted(t for t, status in statuses.items() if status["state"] == "waitrecover"):
            self.tasks.setdefault(task_id, self.step)
            verb = "revertTask" if rng.random() < 0.2 else "recoverTask"
            answer = self.judge(Op(f"{verb} {task_id}", verb, (task_id,), maybe={TASK_STATE}),
                                getattr(self.proxy, verb)(task_id))
            if code(answer) == TASK_STATE:  # its step cannot run again: roll it back
                self.judge(Op(f"revertTask {task_id}", "revertTask", (task_id,)), self.proxy.revertTask(task_id))

    def rule_prepare(self, rng: random.Random) -> None:
        img = self.chosen(rng, [i for i in self.live() if i.key not in self.prepared])
        if img is not None:
            self.perform(self.plan_prepare(img))

    def rule_teardown(self, rng: random.Random) -> None:
        key = self.chosen(rng, sorted(self.prepared))
        if key is not None:
            self.teardown(key)

    def teardown(self, key: tuple[str, str]) -> None:
        img = self.images[key]
        self.judge(Op(f"teardownImage {img.label}", "teardownImage", ()), self.proxy.teardownImage(*key, {}))
        del self.prepared[key]

    def rule_write(self, rng: random.Random) -> None:
        disk = self.chosen(rng, self.live(kind=DISK))
        if disk is None:
            return
        copies = [c for c in self.images.values() if c.source == disk.key and c.phase != DONE]
        for copy in copies:
            if copy.phase == INFLIGHT:
                self.wait_idle_image(copy)
        if any(c.phase != DONE for c in copies):  # the copy would read the new data: leave the disk alone
            self.note(f"write {disk.label}: skipped, a copy of it is not complete")
            return
        if disk.key not in self.prepared:
            answer = self.perform(self.plan_prepare(disk))
            if code(answer) != 0:
                return
        slots = sorted(rng.sample(range(len(SLOTS)), rng.randint(1, len(SLOTS))))
        self.patterns = self.patterns % 250 + 1
        path = self.prepared[disk.key].path
        self.note(f"write {disk.label} pattern {self.patterns} at slots {slots}")
        for slot in slots:
            try:
                qemu_write(path, self.patterns, SLOTS[slot], SLOT)
            except subprocess.CalledProcessError as e:
                self.violate("a prepared disk could not be written", f"{disk.label}: {e.stderr!r}")
                return
            disk.data[slot] = self.patterns
        if rng.random() < 0.6:
            self.teardown(disk.key)

    def rule_restart(self, rng: random.Random) -> None:
        """SIGTERM, or kill -9 right after a commit (its task has likely neither run nor been written: the id
        the client holds must answer after the restart, waiting for recoverTask in transparent mode)."""
        if rng.random() < 0.15:
            self.note("SIGTERM hsmd and start it again")
            self.daemon.stop()
        else:
            self.perform(self.plan_create(rng, auto_fix=True))  # past MAX_LIVE by one: other rules remove
            self.note("kill -9 hsmd and start it again")
            self.kill()
        self.restart()

    def rule_kill_mid_call(self, rng: random.Random) -> None:
        plan = rng.choice([self.plan_create, self.plan_snapshot, self.plan_copy, self.plan_remove, self.plan_fix])
        op = plan(rng, caller_id=True) if plan not in (self.plan_remove, self.plan_fix) else plan(rng)
        if op is None:
            return
        answers: list[dict] = []

        def call() -> None:
            proxy = ServiceProxy(self.daemon.address, timeout=30)
            try:
                answers.append(getattr(proxy, op.verb)(*op.args))
            except CRASHED:
                pass  # killed under the call: it may or may not have happened
            finally:
                proxy.close()
        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(rng.uniform(0.0, 0.06))  # the moment of the kill is the point: before, during or after the commit
        self.kill()
        caller.join(WAIT)
        assert not caller.is_alive(), "a call to a killed hsmd did not end"
        if answers:
            self.note("(answered before the kill)")
            self.restart(answered=(op, answers[0]))
        else:
            self.note(f"{op.text} -> no answer: kill -9 hsmd in the call")
            self.restart(unanswered=op)

    def kill(self) -> None:
        self.daemon.process.send_signal(signal.SIGKILL)
        self.daemon.process.wait()
        self.daemon.close_proxies()

    def restart(self, answered: tuple[Op, dict] | None = None, unanswered: Op | None = None) -> None:
        """Start hsmd again; then take in the call the kill interrupted, whether answered or not."""
        self.stats["restarts"] += 1
        self.daemon.start(timeout=60)
        self.proxy = self.daemon.proxy(timeout=60)
        if self.transparent:  # a start takes the configured mode: the caller sets its own again
            self.set_task_mode(True)
        self.connect_again()
        if answered is not None:
            self.judge(*answered)
        if unanswered is not None:
            self.resolve(unanswered)
        self.recover_waiting()
        for img in [*self.images.values(), *self.removed.values()]:
            if img.phase == PENDING:
                img.phase = INFLIGHT  # the start-up resumes every unfinished intent
        self.check_tasks(list(self.tasks))
        for key in sorted(self.prepared):  # prepared state survives a restart
            img = self.images[key]
            opts = {"taskId": self.new_id(random.Random(f"{self.seed}/{self.step}/prepared"))} if self.transparent \
                else {}
            self.judge(Op(f"removeImage {img.label} (prepared before the restart)", "removeImage", (), must={BUSY},
                          task_id=opts.get("taskId", ""), apply=lambda answer, img=img: self.adopt_removal(img)),
                       self.proxy.removeImage(img.repo, img.id, opts))
            break
        self.check_outside()
        self.check_damaged()

    def adopt_removal(self, img: Img) -> None:
        self.images.pop(img.key, None)
        self.prepared.pop(img.key, None)
        img.phase = INFLIGHT
        self.removed[img.key] = img

    def resolve(self, op: Op) -> None:
        """An unanswered call: both outcomes are right; the repository says which one happened."""
        if op.new is not None and op.new.id:
            listed = op.new.id in ok(self.proxy.getImageList(op.new.repo))["images"]
            held = op.new.key in self.images
            self.note(f"  {op.new.label} {'is' if listed else 'is not'} there after the restart")
            if listed and not held:
                if op.must:
                    self.violate("a call that must be refused took effect", f"{op.text}: {'; '.join(op.why)}")
                op.apply({"status": {"code": 0}, "imageId": op.new.id})
                if op.task_id:
                    self.tasks.setdefault(op.task_id, self.step)
        if op.removes is not None:
            listed = op.removes.id in ok(self.proxy.getImageList(op.removes.repo))["images"]
            self.note(f"  {op.removes.label} {'is still' if listed else 'is not'} there after the restart")
            if not listed:
                if op.must:
                    self.violate("a call that must be refused took effect", f"{op.text}: {'; '.join(op.why)}")
                op.apply({"status": {"code": 0}})
                if op.task_id:
                    self.tasks.setdefault(op.task_id, self.step)

    # -- a volume deleted behind hsmd's back ---------------------------------------------

    def rule_lose_volume(self, rng: random.Random) -> None:
        """Delete a disk's volume file behind hsmd's back: check lists the disk, broken and not fixable,
        getImageStatus says broken (201); removing it works and gives back the rest."""
        busy = {key for img in self.images.values() if img.phase != DONE for key in (img.source, (img.repo, img.disk))}
        disks = [d for d in self.live(kind=DISK) if d.phase == DONE and d.key not in self.prepared
                 and d.key not in busy and not any((d.repo, below) in self.removed for below in d.chain)]
        disk = self.chosen(rng, disks)
        if disk is None:
            return
        self.wait_idle_image(disk)
        info = ok(self.proxy.getImageInfo(disk.repo, disk.id))["image"]
        if info["state"] != "optimized" or info["volumes"][0]["image"] != disk.id:
            return
        deleted = self.delete_volume(disk.repo, info)
        if not deleted:
            return
        self.note(f"delete {disk.label}'s volume {deleted} behind hsmd's back")
        self.lost.add(disk.key)
        disk.seen_usable = False
        entries = [e for e in self.check(disk.repo) if e["imageId"] == disk.id]
        if not any(e.get("fixable") is False for e in entries):
            self.violate("check does not report an image whose volume is gone", f"{disk.label}: {entries}")
        status = ok(self.proxy.getImageStatus(disk.repo, disk.id))["image"]
        if status["state"] != "broken" or status["lastError"].get("code") != MISSING_VOLUME:
            self.violate("an image whose volume is gone is not broken (201)", f"{disk.label}: {status}")
        self.perform(self.plan_remove(rng, disk, reuse=False))
        if disk.key in self.images:  # refused (keep-going): hsmd keeps it, the model lets it go
            self.images.pop(disk.key)
            self.strays.add(disk.key)

    # -- damaged records -------------------------------------------------------------

    def rule_damage(self, rng: random.Random) -> None:
        """Write a damaged record (as a bad disk or another host might), kill -9 hsmd and start it again.

        The kinds come in turn, the fewest written first; with MAX_DAMAGED in
        place, an admin first deletes the oldest one (and the files made for it).
        """
        if len(self.damaged) >= MAX_DAMAGED:
            self.repair(next(iter(self.damaged)))
        repo = rng.choice(self.repos)
        victims = [i for i in self.live(repo) if i.phase == DONE and i.key not in self.prepared]
        kinds = [k for k in DAMAGE_KINDS if victims or k not in ("alias", "steal", "impostor")]
        fewest = min(self.damage_kinds[k] for k in kinds)
        kind = rng.choice([k for k in kinds if self.damage_kinds[k] == fewest])
        self.damage_kinds[kind] += 1
        record_id = self.new_id(rng)
        record = {"id": record_id, "kind": DISK, "size": MiB, "base": "", "userData": {}, "state": "optimized",
                  "intent": {}, "removed": True, "hostId": 1, "stage": "", "percentComplete": 100,
                  "lastError": {}, "created": time.time(), "generation": 1,
                  "volumes": [{"id": self.new_id(rng), "image": record_id, "format": "qcow2"}]}
        repo_path = self.paths[repo]
        sentinel = os.path.dirname(repo_path)
        files: list[str] = []

        def volume(vol_id: str) -> None:  # a volume file the damaged record may own: nothing may touch it
            path = os.path.join(repo_path, "volumes", vol_id + ".qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "1M"], check=True)
            self.protected[path] = contents(path)
            files.append(path)

        if kind == "garbage":
            volume(record["volumes"][0]["id"])
            data = b"\x00\xffnot json at all"
        elif kind == "torn":
            volume(record["volumes"][0]["id"])
            data = json.dumps(record).encode()[:77]
        elif kind in ("escape", "absolute"):
            escape = "../../sentinel/victim" if kind == "escape" else os.path.join(sentinel, "sentinel", "victim-abs")
            record["volumes"][0]["id"] = escape
            data = json.dumps(record).encode()
        elif kind == "badfields":
            volume(record["volumes"][0]["id"])
            record.update(kind="volume", size="lots", base=["not", "an", "id"])
            data = json.dumps(record).encode()
        else:
            victim = rng.choice(victims)
            stolen = json.loads(contents(os.path.join(repo_path, "images", victim.id + ".json")))
            if kind == "alias":  # a copy of another image's record under a new name, marked removed
                stolen["removed"] = True
                record = stolen
            elif kind == "steal":  # a removed record that claims the other image's own volumes
                record["volumes"] = [v for v in stolen["volumes"] if v["image"] == victim.id]
            else:  # impostor: a live record under a new name whose id names the other image
                record.update(id=victim.id, removed=False, size=victim.size,
                              volumes=[{"id": self.new_id(rng), "image": victim.id, "format": "qcow2"}])
            data = json.dumps(record).encode()
            kind = f"{kind} of {victim.label}"
        path = os.path.join(repo_path, "images", record_id + ".json")
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.rename(path + ".part", path)
        self.damaged[(repo, record_id)] = kind
        self.marks[(repo, record_id)] = record_id
        self.damaged_files[(repo, record_id)] = files
        self.stats[f"damaged {kind.split()[0]}"] += 1
        self.note(f"damage: write a {kind} record {record_id} into {repo}; kill -9 hsmd and start it again")
        self.kill()
        self.restart()

    def repair(self, key: tuple[str, str]) -> None:
        """An admin deletes a damaged record and the files made for it (hsmd reads them again at start-up)."""
        repo, record_id = key
        self.note(f"repair: delete the {self.damaged[key]} record {record_id} from {repo}")
        for path in [os.path.join(self.paths[repo], "images", record_id + ".json"), *self.damaged_files.pop(key)]:
            self.protected.pop(path, None)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        del self.damaged[key]
        del self.marks[key]
        self.unreported.discard(key)

    def check_damaged(self) -> None:
        for (repo, record_id), kind in sorted(self.damaged.items()):
            if (repo, record_id) in self.unreported:
                continue
            answer = self.proxy.getImageStatus(repo, record_id)
            image = answer.get("image", {})
            if code(answer) == 0 and image.get("state") == "broken" and image["lastError"].get("code") == UNREADABLE:
                continue
            if any(e.get("fixable") is False and (e["imageId"] == record_id or self.marks[(repo, record_id)]
                                                   in e["description"]) for e in self.check(repo)):
                continue
            self.unreported.add((repo, record_id))  # the violation is told once
            self.violate("a damaged record is not reported", f"{kind} record {record_id} in {repo}: "
                                                             f"getImageStatus {answer}")

    # -- invariants after every step -------------------------------------------------

    def check_step(self) -> None:
        self.check_outside()
        listed = {repo: set(ok(self.proxy.getImageList(repo))["images"]) for repo in self.repos}
        for img in list(self.images.values()):
            if img.id not in listed[img.repo]:
                self.violate("an acknowledged image is gone", img.label)
                self.images.pop(img.key)
                self.prepared.pop(img.key, None)
                continue
            self.observe(img)
        for img in list(self.removed.values()):
            if img.id in listed[img.repo]:
                self.violate("a removed image is listed", img.label)
            if not self.record_stored(img.repo, img.id):
                self.reclaimed(img)
        known = {img.key for img in self.images.values()} | set(self.damaged) | self.strays
        for repo in self.repos:
            for image_id in sorted(listed[repo] - {key[1] for key in known if key[0] == repo}):
                self.strays.add((repo, image_id))
                self.violate("an image nobody made is listed", f"{repo}/{image_id}")
        for key, prepared in self.prepared.items():
            if not os.path.exists(prepared.path) or self.files_of(prepared.path) != prepared.chain:
                self.violate("a prepared image's chain changed under the VM", f"{self.images[key].label}: "
                             f"{prepared.chain} -> {self.files_of(prepared.path)}")
                prepared.chain = self.files_of(prepared.path)
        self.check_tasks([task_id for task_id, seen in self.tasks.items() if seen >= self.step - 2])

    def observe(self, img: Img) -> dict:
        """Read the image's status; once it is usable and no fix works on it, what it holds."""
        info = ok(self.proxy.getImageInfo(img.repo, img.id))["image"]
        for task_id in info["tasks"]:
            self.tasks.setdefault(task_id, self.step)
        usable = info["state"] in ("optimized", "degraded")
        if img.seen_usable and not usable:
            img.seen_usable = False
            self.violate("a usable image turned broken", f"{img.label}: {info['state']} {info['lastError']}")
        if not usable or info["tasks"]:
            return info
        if any((img.repo, below) in self.removed for below in img.chain):
            return info  # a merge may be rebasing it (it names only the removed snapshot)
        missing = self.missing_volumes(img.repo, info)
        if missing:
            self.violate("a usable image lacks volumes", f"{img.label}: {missing}")
            return info
        wrong = "" if img.tainted else self.read_data(img, info)
        self.stats["images read"] += 1
        if wrong:
            img.tainted = True
            self.violate("an image does not read what it must", f"{img.label} ({info['state']}) must read "
                                                                f"{img.data}: {wrong}")
        img.seen_usable = True
        if info["state"] == "optimized" and img.phase != DONE:
            img.phase = DONE
            if img.performance:
                img.chain = []
            if img.base and (img.repo, img.base) in self.images:
                self.check_thin_copy(img, info)
        return info

    def check_thin_copy(self, copy: Img, info: dict) -> None:
        """A copy on a base reads through it, and holds nothing where it reads the same as its base."""
        if len(info["volumes"]) < 2 or info["volumes"][1]["image"] != copy.base:
            self.violate("a copy on a base does not read through it", f"{copy.label}: {info['volumes']}")
            return
        base = self.images[(copy.repo, copy.base)]
        out = subprocess.run(["qemu-img", "map", "-U", "--output=json", self.top_volume(copy.repo, info)],
                             capture_output=True, text=True, check=True).stdout
        own = [(m["start"], m["start"] + m["length"]) for m in json.loads(out) if m["depth"] == 0 and m["data"]]
        for slot, offset in enumerate(SLOTS):
            if copy.data[slot] == base.data[slot] and any(s < offset + SLOT and offset < e for s, e in own):
                self.violate("a copy on a base holds data its base has", f"{copy.label} slot {slot}")

    def reclaimed(self, img: Img) -> None:
        del self.removed[img.key]
        for other in [*self.images.values(), *self.removed.values()]:
            if other.repo == img.repo and img.id in other.chain:
                other.chain.remove(img.id)

    def check_tasks(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            if code(self.proxy.getTaskStatus(task_id)) == UNKNOWN_TASK:
                self.violate("a task id a client was given answers 401", f"{task_id} (seen at step "
                                                                         f"{self.tasks[task_id]})")
                del self.tasks[task_id]

    def check_outside(self) -> None:
        for folder, before in self.outside.items():
            now = tree(folder)
            if now != before:
                changed = sorted(set(now) ^ set(before) | {n for n in now if n in before and now[n] != before[n]})
                self.violate("a file outside the repositories changed", f"{folder}: {changed}")
                self.outside[folder] = now
        for path, data in list(self.protected.items()):
            if not os.path.exists(path) or contents(path) != data:
                self.violate("a volume a damaged record names was touched", path)
                del self.protected[path]

    def files_of(self, path: str) -> list[str]:
        try:
            return [layer["filename"] for layer in backing_chain(path)]
        except subprocess.CalledProcessError as e:
            return [f"unreadable: {e.stderr.strip()}"]

    # -- check, fixes and convergence -------------------------------------------------

    def check(self, repo: str) -> list[dict]:
        entries = ok(self.proxy.checkStorageRepository(repo))["fixes"]
        for entry in entries:
            damaged = (repo, entry["imageId"]) in self.damaged or any(
                mark in entry["description"] for (r, _), mark in self.marks.items() if r == repo)
            if entry.get("fixable") is False and not damaged and (repo, entry["imageId"]) not in self.lost:
                self.violate("an image the model knows is reported unfixable", str(entry))
            if entry.get("fixable") is False and entry.get("fix"):
                self.violate("an unfixable entry carries a fix", str(entry))
        return entries

    def wait_idle(self) -> None:
        def busy() -> dict[str, str]:
            statuses = ok(self.proxy.getAllTasksStatuses())["allTasksStatus"]
            return {task_id: s["state"] for task_id, s in statuses.items() if s["taskState"] != "finished"}

        wait_for(lambda: not busy(), WAIT, what=lambda: f"end of the running tasks: {busy()}", poll=0.05)

    def wait_idle_image(self, img: Img) -> None:
        wait_for(lambda: not self.observe(img)["tasks"], WAIT, what=f"end of {img.label}'s fixes", poll=0.05)

    def settle(self, rng: random.Random, teardown: bool) -> None:
        """Run check's fixes in a random order until none is left; then everything must be whole."""
        if teardown:
            for key in sorted(self.prepared):
                self.teardown(key)
        self.note(f"settle ({'teardown first' if teardown else f'{len(self.prepared)} images stay prepared'})")
        waits = {"optimize", "merge", "clean"} if self.prepared else set()  # they wait for teardownImage
        for _ in range(8):
            self.wait_idle()
            entries = [(repo, e) for repo in self.repos for e in self.check(repo) if e.get("fix")]
            if all(e["type"] in waits for _, e in entries):
                break
            rng.shuffle(entries)
            for repo, entry in entries:
                self.perform(self.fix_op(repo, entry, rng))
        else:
            self.violate("check and fixes do not converge", str(entries))
        self.wait_idle()
        self.check_step()
        for img in list(self.images.values()):
            info = self.observe(img)
            whole = info["state"] == "optimized" or img.key in self.prepared and info["state"] == "degraded"
            if not whole or info["tasks"]:
                self.violate("an image is not usable after the fixes", f"{img.label}: {info}")
                continue
            self.check_chain(img, info)
        self.check_damaged()
        if not self.prepared:
            for img in list(self.removed.values()):
                self.violate("a removed image was not reclaimed", img.label)
                self.reclaimed(img)
            self.check_owned()

    def check_chain(self, img: Img, info: dict) -> None:
        """qemu-img check passes on the image's top volume, whose chain is the one getImageInfo shows."""
        self.check_top(img, info, info["volumes"][0]["path"])

    def check_top(self, img: Img, info: dict, top: str) -> None:
        try:
            qemu_check(top)
        except subprocess.CalledProcessError as e:
            self.violate("qemu-img check fails", f"{img.label}: {e.stdout!r}")
        if self.files_of(top) != [v["path"] for v in info["volumes"]]:
            self.violate("the chain on storage is not the one getImageInfo shows",
                         f"{img.label}: {self.files_of(top)} != {info['volumes']}")

    def check_owned(self) -> None:
        """Every volume file and record in a repository belongs to a listed image or a damaged record."""
        for repo in self.repos:
            owned, records = set(), set()
            for image_id in ok(self.proxy.getImageList(repo))["images"]:
                info = self.proxy.getImageInfo(repo, image_id).get("image", {"volumes": []})
                owned |= {os.path.basename(v["path"]) for v in info["volumes"] if v.get("image") == image_id}
                records.add(image_id + ".json")
            records |= {record_id + ".json" for r, record_id in self.damaged if r == repo}
            owned |= {os.path.basename(path) for path in self.protected if path.startswith(self.paths[repo] + "/")}
            volumes = set(os.listdir(os.path.join(self.paths[repo], "volumes")))
            if volumes - owned:
                self.violate("volume files no image owns", f"{repo}: {sorted(volumes - owned)}")
            if owned - volumes:
                self.violate("volume files images own are missing", f"{repo}: {sorted(owned - volumes)}")
            left = {n for n in os.listdir(os.path.join(self.paths[repo], "images")) if not n.endswith(".tmp")}
            if left - records:
                self.violate("image records nobody lists", f"{repo}: {sorted(left - records)}")


# -- the same walk on block-1 ----------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where an LV's bytes are (its one segment) and what LVM says it is."""
    pv: str
    offset: int
    size: int
    uuid: str
    tags: str


SEGMENT_FIELDS = "pv_name,pe_start,pvseg_start,pvseg_size,vg_name,vg_tags,vg_extent_size,lv_name,lv_uuid,lv_size," \
    "lv_tags"
PROTECTED_BYTES = 4 * MiB  # of an LV a damaged record owns: its qcow2 header and every slot the walk writes


class BlockWalk(Walk):
    """The walk on two block-1 repositories, each a VG on two loop devices of its own, through a real
    supervdsmd (hsmd's `[irs] lv_activation = loop`). What a storage admin does behind hsmd's back is done
    with LVM and on the PVs, as root: a disk's volume is lvremove'd; a damaged record is a record slot of the
    metadata LV overwritten (both copies) with garbage through a second loop device over the PV; hsmd is
    killed and started, and connects each repository again by {vgName}. Images are read straight from the
    PVs (qemu over the LVs' extents, the chain as getImageInfo says it), so reading changes nothing in hsmd;
    `settle` runs qemu-img check on prepareImage's path. Outside the repositories: a sentinel VG on a loop
    device of its own (tagged as a block-1 repository that is not connected, with an LV named like a
    volume) and every PV's VG must stay as they were, and no LV appear in any other VG.
    """

    repos = ("blk", "blk2")
    test_id = "test_image_model_walk[block-1]"

    def __init__(self, daemon, lvm_dir: str, devices: list[str], seed: int, steps: int,
                 keep_going: bool = False) -> None:
        super().__init__(daemon, daemon.root, seed, steps, keep_going)
        suffix = uuid.uuid4().hex[:8]
        self.lvm_dir = lvm_dir
        self.all_devices = list(devices)
        self.pvs = {"blk": devices[0:2], "blk2": devices[2:4]}
        self.sentinel_device = devices[4]
        self.vgs = {repo: f"hsmwalk{n}{suffix}" for n, repo in enumerate(self.repos)}
        self.sentinel_vg = f"hsmsentinel{suffix}"
        self.paths = dict(self.vgs)
        self.metadata: dict[str, MetadataSlots] = {}
        # a damaged slot -> (the image whose record it held, its number, its bytes before, the image's LVs)
        self.hidden: dict[tuple[str, str], tuple[Img, int, bytes, list[str]]] = {}
        self.protected_lvs: dict[tuple[str, str], tuple[Place, str]] = {}  # LVs a damaged record owns
        self._places: dict[tuple[str, str], Place] | None = None  # (vg, lv) -> Place; read again on a miss
        self._records: dict[str, set[str]] = {}  # repo -> image ids with a record, read once per step

    def describe(self) -> list[str]:
        return [f"VGs: {self.vgs} on {self.pvs}; sentinel VG {self.sentinel_vg} on {self.sentinel_device}"]

    # -- LVM and the PVs, as root --------------------------------------------------------

    def lvm(self, command: str, *args: str) -> None:
        done = raw_lvm(self.lvm_dir, self.all_devices, command, *args)
        assert done.returncode == 0, f"lvm {command} {args}: {done.stderr}"

    def segments(self) -> list[dict]:
        """Every PV segment of every device, as one pvs report; the places it gives are kept till a miss."""
        rows = report(self.lvm_dir, self.all_devices, "pvs", "pvseg", "--segments", "-o", SEGMENT_FIELDS)
        self._places = {(row["vg_name"], row["lv_name"]): Place(
            row["pv_name"], int(row["pe_start"]) + int(row["pvseg_start"]) * int(row["vg_extent_size"]),
            int(row["lv_size"]), row["lv_uuid"], row["lv_tags"]) for row in rows if row["lv_name"]}
        return rows

    def places(self, fresh: bool = False) -> dict[tuple[str, str], Place]:
        if fresh or self._places is None:
            self.segments()
        assert self._places is not None
        return self._places

    def place(self, repo: str, lv: str) -> Place | None:
        """Where the LV is now; LVM is asked again when the last report does not know it."""
        key = (self.vgs[repo], lv)
        return self.places().get(key) or self.places(fresh=True).get(key)

    def outside_state(self) -> dict:
        """What must never change: the LVs of every VG but the repositories' (the sentinel's), the VG of every
        PV, and the first MiB of each sentinel LV."""
        rows = self.segments()
        ours = set(self.vgs.values())
        lvs = sorted(tuple(sorted(row.items())) for row in rows if row["vg_name"] not in ours)
        members = sorted({(row["pv_name"], row["vg_name"]) for row in rows})
        data = {lv: hashlib.sha256(read_direct(place.pv, place.offset, MiB)).hexdigest()
                for (vg, lv), place in sorted(self.places().items()) if vg == self.sentinel_vg}
        return {"lvs outside the repositories": lvs, "pvs": members, "sentinel data": data}

    # -- setup and connect -------------------------------------------------------------

    def setup(self) -> None:
        sentinel_uuid = str(uuid.uuid4())
        self.lvm("pvcreate", self.sentinel_device)
        self.lvm("vgcreate", "-s", "128m", "--addtag", "HSM_FORMAT=block-1", "--addtag", f"HSM_UUID={sentinel_uuid}",
                 self.sentinel_vg, self.sentinel_device)
        volume_id = str(uuid.uuid4())
        self.lvm("lvcreate", "-n", volume_id, "-L", "128m", "--addtag", f"IU_{uuid.uuid4()}", "--addtag",
                 "PU_00000000-0000-0000-0000-000000000000", self.sentinel_vg)
        self.lvm("lvcreate", "-n", "metadata", "-L", "128m", self.sentinel_vg)
        for (vg, lv), place in self.places(fresh=True).items():
            if vg == self.sentinel_vg:
                write_whole(place.pv, place.offset, f"{lv}: outside every repository\n".encode().ljust(MiB, b"\x5a"))
        self.outside = self.outside_state()
        if not self.daemon.alive():
            self.daemon.start()
        self.proxy = self.daemon.proxy(timeout=60)
        for repo in self.repos:
            params = {"vgName": self.vgs[repo], "devices": self.pvs[repo]}
            repo_uuid = ok(self.proxy.createStorageRepository("block-1", params, {}))["repoUuid"]
            ok(self.proxy.connectStorageRepository(repo, "block-1", {"vgName": self.vgs[repo]}, {}))
            self.metadata[repo] = MetadataSlots(self.lvm_dir, self.all_devices, self.vgs[repo], repo_uuid)
        self.outside["pvs"] = self.outside_state()["pvs"]  # the repositories' PVs are in their VGs now

    def connect_again(self) -> None:
        for repo in self.repos:
            answer = self.proxy.connectStorageRepository(repo, "block-1", {"vgName": self.vgs[repo]}, {})
            if code(answer) != 0:
                self.violate("a block-1 repository did not connect again", f"{repo}: {answer}")

    def cleanup(self) -> None:
        """hsmd killed, its loop devices over the PVs detached, the VGs removed: the devices serve again."""
        self.daemon.kill()
        detach_loops_over(self.all_devices)
        for vg in [*self.vgs.values(), self.sentinel_vg]:
            raw_lvm(self.lvm_dir, self.all_devices, "vgremove", "-f", vg)
        raw_lvm(self.lvm_dir, self.all_devices, "pvremove", "-y", *self.all_devices)

    # -- storage, as an admin sees it --------------------------------------------------

    def check_step(self) -> None:
        self._records = {}  # check_outside reads the places again
        super().check_step()

    def record_stored(self, repo: str, image_id: str) -> bool:
        if repo not in self._records:
            self._records[repo] = set(self.metadata[repo].records())
        return image_id in self._records[repo]

    def missing_volumes(self, repo: str, info: dict) -> list[str]:
        return [v["id"] for v in info["volumes"] if self.place(repo, v["id"]) is None]

    def layer(self, repo: str, volume: dict) -> str:
        """A json: filename that opens one volume alone (no backing) from its LV's extents on the PV."""
        place = self.place(repo, volume["id"])
        assert place is not None, f"{repo}: no LV {volume['id']}"
        spec: dict = {"driver": volume["format"], "file": {"driver": "raw", "offset": place.offset, "size": place.size,
                                                           "file": {"driver": "host_device", "filename": place.pv}}}
        if volume["format"] == "qcow2":
            spec["backing"] = None
        return "json:" + json.dumps(spec, separators=(",", ":"))

    def top_volume(self, repo: str, info: dict) -> str:
        return self.layer(repo, info["volumes"][0])

    def read_data(self, img: Img, info: dict) -> str:
        """The chain getImageInfo shows, read layer by layer from the PVs (qemu takes no backing over a raw
        offset node, so layered_slots walks the chain itself)."""
        wrong = layered_slots([self.layer(img.repo, v) for v in info["volumes"]], img.data)
        if wrong:  # an LV may have moved since LVM was last asked: ask again before saying so
            self.places(fresh=True)
            wrong = layered_slots([self.layer(img.repo, v) for v in info["volumes"]], img.data)
        return wrong

    def delete_volume(self, repo: str, info: dict) -> str:
        lv = info["volumes"][0]["id"]
        if self.place(repo, lv) is None:
            return ""
        self.lvm("lvremove", "-f", f"{self.vgs[repo]}/{lv}")
        self.places(fresh=True)
        return f"LV {lv}"

    # -- damaged records: a slot of the metadata LV overwritten ----------------------------

    def rule_damage(self, rng: random.Random) -> None:
        """Overwrite both copies of a disk's record slot with garbage (hsmd killed), and start it again: the
        disk is gone from the listing, check reports the slot (fixable: false), and nothing touches the
        disk's LV. The disk is a whole one (on no snapshot, read by nothing unfinished), so nothing else
        reads through its volume. With MAX_DAMAGED in place, an admin first writes the oldest damaged slot
        back as it was (from a backup): that disk is listed again and reads as before."""
        repo = rng.choice(self.repos)
        busy = {key for img in self.images.values() if img.phase != DONE for key in (img.source, (img.repo, img.disk))}
        disks = [d for d in self.live(repo, DISK) if d.phase == DONE and not d.chain and d.key not in self.prepared
                 and d.key not in busy and d.key not in self.lost and not d.tainted]
        victim = self.chosen(rng, disks)
        info = None
        if victim is not None:
            self.wait_idle_image(victim)
            info = ok(self.proxy.getImageInfo(repo, victim.id))["image"]
            if info["state"] != "optimized" or [v["image"] for v in info["volumes"]] != [victim.id]:
                victim = None
        if victim is None and len(self.damaged) < MAX_DAMAGED:
            self.note(f"damage: no whole idle disk in {repo}")
            return
        self.kill()
        if len(self.damaged) >= MAX_DAMAGED:
            self.repair(next(iter(self.damaged)))
        if victim is not None and info is not None:
            self.damage_slot(repo, victim, info, rng)
        self.restart()

    def damage_slot(self, repo: str, victim: Img, info: dict, rng: random.Random) -> None:
        metadata = self.metadata[repo]
        [number] = [n for n, slot in metadata.slots().items()
                    if n and slot.newest is not None and slot.newest.image_id == victim.id]
        saved = read_direct(metadata.pv, metadata.offset + number * SLOT_BYTES, SLOT_BYTES)
        garbage = b"garbage!" + rng.randbytes(SLOT_BYTES - 8)
        write_through_loop(metadata.pv, metadata.offset, metadata.size, number * SLOT_BYTES, garbage)
        key = victim.key
        self.images.pop(key)
        self.hidden[key] = (victim, number, saved, [volume["id"] for volume in info["volumes"]])
        self.damaged[key] = f"garbage slot {number} of {victim.label}"
        self.marks[key] = f"slot {number} of {self.vgs[repo]}/metadata:"
        self.damage_kinds["garbage"] += 1
        self.stats["damaged garbage"] += 1
        for volume in info["volumes"]:
            place = self.place(repo, volume["id"])
            assert place is not None
            self.protected_lvs[(repo, volume["id"])] = (place, self.digest(place))
        self.note(f"damage: kill -9 hsmd, overwrite slot {number} of {repo} ({victim.label}'s record) with "
                  "garbage, start hsmd")

    @staticmethod
    def digest(place: Place) -> str:
        return hashlib.sha256(read_direct(place.pv, place.offset, PROTECTED_BYTES)).hexdigest()

    def repair(self, key: tuple[str, str]) -> None:
        """An admin writes the damaged slot back as it was (hsmd is down; it reads it at start-up)."""
        repo, _ = key
        victim, number, saved, lvs = self.hidden.pop(key)
        metadata = self.metadata[repo]
        self.note(f"repair: write slot {number} of {repo} back as it was ({victim.label}'s record)")
        write_through_loop(metadata.pv, metadata.offset, metadata.size, number * SLOT_BYTES, saved)
        for lv in lvs:
            self.protected_lvs.pop((repo, lv), None)
        del self.damaged[key]
        del self.marks[key]
        self.unreported.discard(key)
        self.images[key] = victim

    # -- invariants --------------------------------------------------------------------

    def check_outside(self) -> None:
        now = self.outside_state()
        if now != self.outside:
            changed = {what: (self.outside[what], now[what]) for what in now if now[what] != self.outside[what]}
            self.violate("something outside the repositories changed", str(changed))
            self.outside = now
        for (repo, lv), (place, digest) in list(self.protected_lvs.items()):
            found = self.places().get((self.vgs[repo], lv))
            if found != place or self.digest(place) != digest:
                self.violate("an LV a damaged record owns was touched", f"{repo}/{lv}: {place} -> {found}")
                del self.protected_lvs[(repo, lv)]

    def check_chain(self, img: Img, info: dict) -> None:
        held = self.prepared.get(img.key)
        path = held.path if held else ""
        if not held:
            answer = self.proxy.prepareImage(img.repo, img.id, {})
            if code(answer) != 0:
                self.violate("a settled image cannot be prepared", f"{img.label}: {answer['status']}")
                return
            path = answer["path"]
        try:
            self.check_top(img, info, path)
        finally:
            if not held:
                ok(self.proxy.teardownImage(img.repo, img.id, {}))

    def check_owned(self) -> None:
        """Every LV of a repository's VG belongs to a listed image or a damaged record; every record slot to a
        listed image."""
        places = self.places(fresh=True)
        for repo in self.repos:
            owned = {lv for r, lv in self.protected_lvs if r == repo}
            listed = set(ok(self.proxy.getImageList(repo))["images"])
            for image_id in listed:
                info = self.proxy.getImageInfo(repo, image_id).get("image", {"volumes": []})
                owned |= {v["id"] for v in info["volumes"] if v.get("image") == image_id}
            lvs = {lv for vg, lv in places if vg == self.vgs[repo]} - set(block.AREAS)
            if lvs - owned:
                self.violate("LVs no image owns", f"{repo}: {sorted(lvs - owned)}")
            if owned - lvs:
                self.violate("LVs images own are missing", f"{repo}: {sorted(owned - lvs)}")
            records = set(self.metadata[repo].records())
            if records - listed:
                self.violate("image records nobody lists", f"{repo}: {sorted(records - listed)}")


def block_walk(daemon, lvm_dir: str, devices: list[str], seed: int, steps: int) -> None:
    """The block-1 walk on `devices` (two PVs per repository, then the sentinel's); they are free again after."""
    keep_going = os.environ.get("HSM_MODEL_KEEP_GOING", "") not in ("", "0")
    walk_ = BlockWalk(daemon, lvm_dir, devices, seed, steps, keep_going)
    try:
        walk_.run()
        daemon.stop()
    finally:
        walk_.cleanup()


def layered_slots(layers: list[str], data: list[int]) -> str:
    """qemu_slots for a chain given as its volumes, top first, each opened alone: a slot reads what the first
    volume that holds it (data or zeros) has there, zeros when none does. One qemu-io for the whole chain."""
    argv = ["qemu-io"]
    for layer in layers:
        argv += ["-c", f"open -r -U {layer}"]
        for offset, pattern in zip(SLOTS, data, strict=True):
            argv += ["-c", f"alloc {offset} {SLOT}", "-c", f"read -P {pattern} {offset} {SLOT}"]
        argv += ["-c", "close"]
    done = subprocess.run(argv, capture_output=True, text=True)
    found: list[list] = []  # [bytes the volume holds, pattern read] of each volume and slot, in order
    for line in done.stdout.splitlines():
        if "bytes allocated at offset" in line:
            found.append([int(line.split("/")[0]), True])
        elif line.startswith("Pattern verification failed") and found:
            found[-1][1] = False
    if len(found) != len(layers) * len(SLOTS):
        return (done.stdout + done.stderr).strip()
    wrong = []
    for slot, pattern in enumerate(data):
        held = [found[n * len(SLOTS) + slot] for n in range(len(layers))]
        first = next((n for n, (allocated, _) in enumerate(held) if allocated), None)
        if first is None and pattern != 0:
            wrong.append(f"slot {slot}: no volume holds it, so it reads zeros, not {pattern}")
        elif first is not None and not held[first][1]:
            wrong.append(f"slot {slot}: volume {first} of the chain holds it, and not pattern {pattern}")
        elif first is not None and held[first][0] != SLOT:
            wrong.append(f"slot {slot}: volume {first} of the chain holds only {held[first][0]} bytes of it")
    return "; ".join(wrong)


def qemu_slots_one(path: str, pattern: int, offset: int) -> str:
    done = subprocess.run(["qemu-io", "-r", "-U", "-f", "qcow2", "-c", f"read -P {pattern} {offset} {SLOT}", path],
                          capture_output=True, text=True)
    return "" if done.returncode == 0 and "fail" not in done.stdout.lower() else done.stdout


def walk(make_hsmd, seed: int, steps: int, name: str = "hsmd") -> None:
    daemon = make_hsmd(name)
    keep_going = os.environ.get("HSM_MODEL_KEEP_GOING", "") not in ("", "0")
    Walk(daemon, daemon.root, seed, steps, keep_going).run()
    daemon.stop()


FORMATS = ["localfs-1", pytest.param("block-1", marks=real_lvm)]


def block_devices(request) -> list[str]:
    """Two sparse 8 GiB loop devices for each of the two repositories, and a small one for the sentinel VG."""
    loops = request.getfixturevalue("loops")
    return [loops(8192) for _ in range(4)] + [loops(1024)]


@pytest.mark.timeout(1200)  # localfs-1: about 30 s alone; block-1: about 3 minutes on a busy 2-core machine
@pytest.mark.parametrize("repo_format", FORMATS)
def test_image_model_walk(repo_format, make_hsmd, request):
    seed = int(os.environ.get("HSM_MODEL_SEED", CI_SEED))
    if repo_format == "localfs-1":
        walk(make_hsmd, seed, int(os.environ.get("HSM_MODEL_STEPS", CI_STEPS)))
        return
    devices = block_devices(request)
    block_walk(request.getfixturevalue("block_hsmd"), request.getfixturevalue("lvm_dir"), devices, seed,
               int(os.environ.get("HSM_MODEL_STEPS", CI_STEPS_BLOCK)))


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
@pytest.mark.parametrize("repo_format", FORMATS)
def test_image_model_walk_long(repo_format, make_hsmd, request):
    first = int(os.environ.get("HSM_MODEL_SEED", time.time()))
    seeds = int(os.environ.get("HSM_MODEL_SEEDS", 5))
    if repo_format == "localfs-1":
        for n in range(seeds):
            walk(make_hsmd, first + n, int(os.environ.get("HSM_MODEL_STEPS", 600)), name=f"hsmd{n}")
        return
    devices = block_devices(request)
    lvm_dir, supervdsmd = request.getfixturevalue("lvm_dir"), request.getfixturevalue("lvm_supervdsmd")
    for n in range(seeds):  # a new hsmd (as block_hsmd makes it) and new VGs on the same devices for each seed
        daemon = make_hsmd(f"hsmd{n}", config={"supervdsm": {"socket": supervdsmd.socket},
                                               "irs": {"lv_activation": "loop", "sd_health_check_delay": 0.2}})
        block_walk(daemon, lvm_dir, devices, first + n, int(os.environ.get("HSM_MODEL_STEPS", 300)))


# -- a full repository ---------------------------------------------------------------


@pytest.fixture
def full_repository(make_hsmd, tmp_path):
    """(hsmd, proxy, path): a running hsmd with a 32 MiB ext4 loop mount connected as repository 'full'."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control") or not shutil.which("mkfs.ext4"):
        pytest.skip("a full-filesystem repository needs root, loop devices and mkfs.ext4")
    image, mountpoint = tmp_path / "fs.img", tmp_path / "full"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)  # no root reserve
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {mounted.stderr.strip()}")
    daemon = make_hsmd()
    try:
        daemon.start()
        proxy = daemon.proxy(timeout=60)
        ok(proxy.createStorageRepository("localfs-1", {"path": str(mountpoint)}, {"force": True}))  # lost+found
        ok(proxy.connectStorageRepository("full", "localfs-1", {"path": str(mountpoint)}, {}))
        yield daemon, proxy, str(mountpoint)
    finally:
        daemon.kill()
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


def fill(path: str) -> str:
    """Write a file until the filesystem has no block left (root's reserve too)."""
    filler = os.path.join(path, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\xa5" * MiB)
                f.flush()
        except OSError:
            pass
    with open(filler, "ab") as f:
        try:
            while True:
                f.write(b"\xa5" * 4096)
                f.flush()
        except OSError:
            pass
    return filler


def settle_repository(proxy, repo: str, rounds: int = 6) -> None:
    for _ in range(rounds):
        wait_for(lambda: all(s["taskState"] == "finished"
                             for s in ok(proxy.getAllTasksStatuses())["allTasksStatus"].values()),
                 WAIT, what="end of the running fixes", poll=0.05)
        fixes = [e for e in ok(proxy.checkStorageRepository(repo))["fixes"] if e.get("fix")]
        if not fixes:
            return
        for entry in fixes:
            assert code(proxy.fixStorageRepository(repo, entry["fix"], {})) in (0, INVALID_FIX), entry
    raise AssertionError(f"fixes keep coming back: {fixes}")


def wait_usable(proxy, repo: str, image_id: str) -> dict:
    seen: list[dict] = [{}]

    def usable() -> dict | None:
        image = seen[0] = ok(proxy.getImageInfo(repo, image_id))["image"]
        return image if image["state"] == "optimized" and not image["tasks"] else None

    return wait_for(usable, WAIT, what=lambda: f"{image_id} optimized: still {seen[0]}", poll=0.05)


def test_removing_works_on_a_full_repository(full_repository):
    """Removing must always be possible, even with no block left; space then comes back and all converges."""
    daemon, proxy, path = full_repository
    disk = ok(proxy.createVirtualDisk("full", str(4 * MiB), "", {}, {}))["imageId"]
    qemu_write(wait_usable(proxy, "full", disk)["volumes"][0]["path"], 0x11, 0, MiB)
    snapshot = ok(proxy.createSnapshot("full", disk, {}, {}))["imageId"]
    wait_usable(proxy, "full", snapshot)
    child = ok(proxy.createVirtualDisk("full", str(4 * MiB), snapshot, {}, {}))["imageId"]
    qemu_write(wait_usable(proxy, "full", child)["volumes"][0]["path"], 0x22, MiB, MiB)
    spare = ok(proxy.createVirtualDisk("full", str(4 * MiB), "", {}, {}))["imageId"]
    qemu_write(wait_usable(proxy, "full", spare)["volumes"][0]["path"], 0x33, 0, 2 * MiB)
    filler = fill(path)
    space = os.statvfs(path)
    assert space.f_bavail * space.f_frsize < 64 * KiB, "the filesystem is not full"

    for image_id in (spare, disk, snapshot):  # a plain disk, a disk on a snapshot, a snapshot with a child
        answer = proxy.removeImage("full", image_id, {})
        assert code(answer) == 0, f"removeImage on a full repository: {answer}"
    made = proxy.createVirtualDisk("full", str(4 * MiB), "", {}, {})  # may be refused, or fail in its fix
    daemon.process.send_signal(signal.SIGKILL)  # a crash while full must leave every record readable
    daemon.process.wait()
    daemon.start()
    proxy = daemon.proxy(timeout=60)
    ok(proxy.connectStorageRepository("full", "localfs-1", {"path": path}, {}))
    listed = set(ok(proxy.getImageList("full"))["images"])
    assert child in listed and not listed & {spare, disk, snapshot}, listed

    os.remove(filler)
    settle_repository(proxy, "full")
    info = wait_usable(proxy, "full", child)
    top = info["volumes"][0]["path"]
    assert not qemu_slots_one(top, 0x11, 0) and not qemu_slots_one(top, 0x22, MiB)
    qemu_check(top)
    expected = {child} | ({made["imageId"]} if code(made) == 0 else set())
    assert set(ok(proxy.getImageList("full"))["images"]) == expected
    if code(made) == 0:
        assert not qemu_slots_one(wait_usable(proxy, "full", made["imageId"])["volumes"][0]["path"], 0, 0)
    owned = {os.path.basename(v["path"]) for image_id in expected
             for v in ok(proxy.getImageInfo("full", image_id))["image"]["volumes"] if v["image"] == image_id}
    assert set(os.listdir(os.path.join(path, "volumes"))) == owned
