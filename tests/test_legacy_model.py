"""A model of VDSM's legacy volume verbs, walked at random against a real hsmd through vdsm_shim.

A plain Python model holds, per storage domain (two localfs domains), every
VDSM image: its chain of volume ids (leaf first), the template it is made on,
whether it is a template, and what it must read (a pattern per 64 KiB slot).
A volume that stops being a leaf keeps, in the model, the data it held then:
a copy from an INTERNAL volume reads the chain up to it. Each step applies one
rule the model says applies: createVolume (a new image, COW or RAW, sparse or
preallocated, size in sectors or bytes; a snapshot on the leaf; an image on a
template), a write into an image's leaf with qemu-io, copyImage (a disk or a
template, from the leaf or an INTERNAL volume), mergeSnapshots over a range of
INTERNAL volumes, deleteImage/deleteVolume, moveImage (copy or move) and
moveMultipleImages to the other domain, prepareImage/teardownImage in VDSM's
form, and kill -9 of hsmd with tasks in flight or queued behind blockers. The
proxy puts hsmd in transparent task mode: every verb carries the test's task
id. After every step:

- every task the step started finishes with code 0 (and is cleared, as VDSM
  does); every refusal is the code the model predicts; after a kill, every
  task still awaited answers getTaskStatus (never 401) in waitrecover and
  finishes after recoverTask;
- getImagesList of each domain and getVolumesList of each image are the
  model's; every slot of every image reads its pattern through the leaf; a
  template's volume file never changes.

At the end every image is deleted and the domains' volumes folders empty.

HSM_MODEL_SEED picks the seed (CI uses a fixed one) and HSM_MODEL_STEPS the
length; each step draws from its own Random(seed/step). A failure prints the
seed, the replay command and the step log. HSM_LEGACY_OUTAGE_CALL (0 to 1,
default 0.5) is how often a kill is followed by a call while hsmd is away
(answered 5015); without one, the next call finds its connection closed and
must still switch the restarted hsmd to transparent mode first (this walk
found the shim did not: the stdlib's transport sent the call again silently).
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.images_helpers import MiB, code, ok, qemu_write
from tests.waiting import wait_for
from vdsm_shim import ServiceProxy

KiB = 1024
SLOT = 64 * KiB
SLOTS = (0, 448 * KiB, 1216 * KiB, 1856 * KiB)  # all below the smallest size
SIZES = (2 * MiB, 3 * MiB, 4 * MiB)
DOMAINS = ("11111111-1111-4111-8111-111111111111", "44444444-4444-4444-8444-444444444444")
BLANK = "00000000-0000-0000-0000-000000000000"
COW, RAW, PREALLOCATED, SPARSE, SHARED, LEAF, KEEP_FORMAT = 4, 5, 1, 2, 6, 8, 3
FORMATS = {COW: "qcow2", RAW: "raw"}
BUSY, NO_IMAGE, BAD_CHILD, CANNOT_DELETE, SHARED_IN_USE, VOLUME_EXISTS = 203, 268, 204, 222, 223, 212
MAX_IMAGES = 7       # per domain
MAX_CHAIN = 5
POOL = 2             # hsmd's task threads: the blockers of a queued kill fill them
CI_SEED = 20260501
CI_STEPS = 80
WAIT = 120.0
DONE = ("finished", "recovered", "failed")


@dataclass
class Img:
    id: str
    chain: list[str]             # volume ids, leaf first; a template's volume last when made on one
    size: int
    data: list[int]              # the pattern each slot of the leaf reads (0: zeros)
    template: str = ""           # the template image it is made on
    is_template: bool = False


@dataclass
class Call:
    """One verb call: the code the model predicts (any of `codes`), the tasks a success starts, and what
    it changes in the model (`apply`, run on success)."""
    text: str
    verb: str
    args: tuple
    codes: set[int]
    tasks: list[str] = field(default_factory=list)
    apply: Callable[[], None] | None = None
    touches: set[tuple[str, str]] = field(default_factory=set)


def reads(path: str, fmt: str, data: list[int]) -> str:
    """'' when the image at `path` reads `data` (a pattern per slot); else what qemu-io said.
    One qemu-io for every slot (qemu_reads runs one a range, and only qcow2)."""
    argv = ["qemu-io", "-r", "-U", "-f", fmt]
    for offset, pattern in zip(SLOTS, data, strict=True):
        argv += ["-c", f"read -P {pattern} {offset} {SLOT}"]
    done = subprocess.run(argv + [path], capture_output=True, text=True)
    if done.returncode != 0 or "fail" in done.stdout.lower():
        return (done.stdout + done.stderr).strip()
    return ""


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Walk:
    def __init__(self, daemon, root: str, seed: int, steps: int) -> None:
        self.daemon, self.root, self.seed, self.steps = daemon, root, seed, steps
        self.images: dict[str, dict[str, Img]] = {sd: {} for sd in DOMAINS}
        self.frozen: dict[str, list[int]] = {}       # volume id -> its data once no leaf (INTERNAL, template)
        self.formats: dict[str, str] = {}            # volume id -> qcow2 or raw
        self.prepared: set[tuple[str, str]] = set()
        self.awaited: dict[str, int] = {}            # task id -> the step that started it
        self.busy: set[tuple[str, str]] = set()      # images a task of this step works on
        self.digests: dict[tuple[str, str], str] = {}  # a template's volume file, as first read
        self.log: list[str] = []
        self.stats: Counter[str] = Counter()
        self.step = -1
        self.patterns = 0
        self.calls = 0
        self.irs = None

    # -- the walk -------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        rules = [(self.rule_create, 10), (self.rule_snapshot, 9), (self.rule_write, 12), (self.rule_copy, 8),
                 (self.rule_on_template, 5), (self.rule_merge, 6), (self.rule_delete, 7), (self.rule_move, 10),
                 (self.rule_prepare, 3), (self.rule_teardown, 5), (self.rule_kill, 4)]
        try:
            self.setup()
            for step in range(self.steps):
                self.step = step
                rng = random.Random(f"{self.seed}/{step}")
                while not rng.choices([r for r, _ in rules], [w for _, w in rules])[0](rng):
                    pass
                self.settle()
                self.check()
            self.step = self.steps
            self.finish()
        except Exception as e:
            raise AssertionError(self.report(f"{type(e).__name__}: {e}")) from e
        print("\n".join(self.log))
        print(", ".join(f"{what}: {n}" for what, n in sorted(self.stats.items())))
        print(f"legacy model: seed {self.seed} walked {self.steps} steps in {time.monotonic() - started:.0f} s")

    def report(self, what: str) -> str:
        return "\n".join([
            f"legacy model failed at step {self.step}: {what}",
            f"replay: HSM_MODEL_SEED={self.seed} HSM_MODEL_STEPS={self.steps} "
            ".venv/bin/python -m pytest tests/test_legacy_model.py",
            f"hsmd log: {self.daemon.log_path}", "steps:", *self.log])

    def note(self, line: str) -> None:
        self.log.append(f"{self.step:4d} {line}")

    def setup(self) -> None:
        self.daemon.start()
        self.irs = ServiceProxy(self.daemon.address, timeout=WAIT)
        for n, sd in enumerate(DOMAINS):
            path = os.path.join(self.root, f"domain{n}")
            os.mkdir(path)
            ok(self.irs.createStorageDomain(4, sd, f"domain{n}", path, 1, 3))

    def volumes_folder(self, sd: str) -> str:
        return os.path.join(self.root, f"domain{DOMAINS.index(sd)}", sd, "volumes")

    # -- the model ------------------------------------------------------------

    @staticmethod
    def new_id(rng: random.Random) -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def task_id(self, n: int = 0) -> str:
        self.calls += 1
        return f"vdsm-{self.step}-{n}-{self.calls}"

    def pick(self, rng: random.Random, sd: str | None = None, idle: bool = True,
             test: Callable[[str, Img], bool] = lambda sd, img: True) -> tuple[str, Img] | None:
        """A random image (of `sd`, or any domain) that `test` accepts; idle: no task of this step on it."""
        found = [(d, img) for d in DOMAINS if sd in (None, d) for img in self.images[d].values()
                 if test(d, img) and not (idle and self.busy & self.reads_through(d, img))]
        return rng.choice(sorted(found, key=lambda f: (f[0], f[1].id))) if found else None

    def reads_through(self, sd: str, img: Img) -> set[tuple[str, str]]:
        return {(sd, img.id)} | ({(sd, img.template)} if img.template else set())

    def internal(self, img: Img) -> list[str]:
        """The image's INTERNAL volumes, nearest the leaf first."""
        return img.chain[1:len(img.chain) - (1 if img.template else 0)]

    def users(self, sd: str, template: str) -> list[str]:
        return [img.id for img in self.images[sd].values() if img.template == template]

    def size_arg(self, rng: random.Random, size: int) -> int | str:
        return size // 512 if rng.random() < 0.5 else str(size)

    def leaf_data(self, img: Img, vol: str) -> list[int]:
        return list(img.data) if vol == img.chain[0] else list(self.frozen[vol])

    def full(self, sd: str) -> bool:
        return len(self.images[sd]) >= MAX_IMAGES

    # -- calling ----------------------------------------------------------------

    def perform(self, call: Call) -> int:
        answer = getattr(self.irs, call.verb)(*call.args)
        result = code(answer)
        self.stats[f"{call.verb} -> {result}"] += 1
        self.note(f"{call.text} -> {result}")
        assert result in call.codes, (f"{call.text}: answered {result} {answer['status']['message']!r}, "
                                      f"the model predicts {sorted(call.codes)}")
        if result == 0:
            if call.tasks:
                assert answer.get("uuid") == call.tasks[0], f"{call.text}: task {answer.get('uuid')!r}"
            for task in call.tasks:
                self.awaited[task] = self.step
            self.busy |= call.touches if call.tasks else set()
            if call.apply:
                call.apply()
        return result

    def opts(self, n: int = 0) -> dict:
        return {"taskId": self.task_id(n)}

    # -- rules: each plans one call (None when the model says it does not apply) ------------------

    def rule_create(self, rng: random.Random, n: int = 0) -> Call | bool:
        sd = rng.choice(DOMAINS)
        if self.full(sd):
            return False
        img_id, vol = self.new_id(rng), self.new_id(rng)
        fmt, alloc = rng.choice([(COW, SPARSE), (COW, SPARSE), (RAW, SPARSE), (RAW, PREALLOCATED)])
        size = rng.choice(SIZES)
        opts = self.opts(n)

        def apply() -> None:
            self.images[sd][img_id] = Img(img_id, [vol], size, [0] * len(SLOTS))
            self.formats[vol] = FORMATS[fmt]
        return self.go(n, Call(f"createVolume {sd[:2]}/{img_id[:6]} {FORMATS[fmt]} alloc {alloc} size {size}",
                               "createVolume", (sd, BLANK, img_id, self.size_arg(rng, size), fmt, alloc, "DATA",
                                                vol, "new", "", "", opts),
                               {0}, [opts["taskId"]], apply, {(sd, img_id)}))

    def go(self, n: int, call: Call) -> Call | bool:
        """Run the call now (n == 0: a step of its own), or hand it to the kill rule that batches calls."""
        if n:
            return call
        self.perform(call)
        return True

    def rule_snapshot(self, rng: random.Random, n: int = 0) -> Call | bool:
        found = self.pick(rng, test=lambda sd, img: not img.is_template and len(img.chain) < MAX_CHAIN
                          and (sd, img.id) not in self.prepared)
        if not found:
            return False
        sd, img = found
        vol, leaf, opts = self.new_id(rng), img.chain[0], self.opts(n)

        def apply() -> None:
            self.frozen[leaf] = list(img.data)
            img.chain.insert(0, vol)
            self.formats[vol] = "qcow2"
        return self.go(n, Call(f"snapshot {sd[:2]}/{img.id[:6]} over {leaf[:6]}", "createVolume",
                               (sd, BLANK, img.id, self.size_arg(rng, img.size), COW, SPARSE, "DATA", vol, "snap",
                                img.id, leaf, opts), {0}, [opts["taskId"]], apply, self.reads_through(sd, img)))

    def rule_write(self, rng: random.Random) -> bool:
        found = self.pick(rng, test=lambda sd, img: not img.is_template and (sd, img.id) not in self.prepared)
        if not found:
            return False
        sd, img = found
        slot = rng.randrange(len(SLOTS))
        self.patterns = self.patterns % 254 + 1
        path = ok(self.irs.getVolumePath(sd, BLANK, img.id, img.chain[0]))["path"]
        qemu_write(path, self.patterns, SLOTS[slot], SLOT, fmt=self.formats[img.chain[0]])
        img.data[slot] = self.patterns
        self.note(f"write {self.patterns} into slot {slot} of {sd[:2]}/{img.id[:6]}")
        return True

    def rule_copy(self, rng: random.Random, n: int = 0) -> Call | bool:
        found = self.pick(rng, test=lambda sd, img: (sd, img.id) not in self.prepared)
        target = rng.choice(DOMAINS)
        if not found or self.full(target):
            return False
        sd, src = found
        target = sd if rng.random() < 0.7 else target
        vol = rng.choice([src.chain[0], *self.internal(src)])
        vol_type, vol_format = rng.choice([SHARED, LEAF]), rng.choice([KEEP_FORMAT, COW, RAW])
        fmt = self.formats[vol] if vol_format == KEEP_FORMAT else FORMATS[vol_format]
        img_id, dst_vol, opts = self.new_id(rng), self.new_id(rng), self.opts(n)
        data = self.leaf_data(src, vol)

        def apply() -> None:
            self.images[target][img_id] = Img(img_id, [dst_vol], src.size, data, is_template=vol_type == SHARED)
            self.formats[dst_vol] = fmt
            if vol_type == SHARED:
                self.frozen[dst_vol] = list(data)
        kind = "template" if vol_type == SHARED else "disk"
        return self.go(n, Call(f"copyImage {sd[:2]}/{src.id[:6]} vol {vol[:6]} -> {kind} {target[:2]}/{img_id[:6]} "
                               f"format {vol_format}", "copyImage",
                               (sd, BLANK, BLANK, src.id, vol, img_id, dst_vol, "copy", target, vol_type, vol_format,
                                0, False, False, opts), {0}, [opts["taskId"]], apply,
                               self.reads_through(sd, src) | {(target, img_id)}))

    def rule_on_template(self, rng: random.Random, n: int = 0) -> Call | bool:
        found = self.pick(rng, test=lambda sd, img: img.is_template and not self.full(sd))
        if not found:
            return False
        sd, tmpl = found
        img_id, vol, opts = self.new_id(rng), self.new_id(rng), self.opts(n)

        def apply() -> None:
            self.images[sd][img_id] = Img(img_id, [vol, tmpl.chain[0]], tmpl.size, list(tmpl.data), tmpl.id)
            self.formats[vol] = "qcow2"
        return self.go(n, Call(f"createVolume {sd[:2]}/{img_id[:6]} on template {tmpl.id[:6]}", "createVolume",
                               (sd, BLANK, img_id, self.size_arg(rng, tmpl.size), COW, SPARSE, "DATA", vol, "on",
                                tmpl.id, tmpl.chain[0], opts), {0}, [opts["taskId"]], apply,
                               {(sd, img_id), (sd, tmpl.id)}))

    def rule_merge(self, rng: random.Random, n: int = 0) -> Call | bool:
        found = self.pick(rng, test=lambda sd, img: bool(self.internal(img)) and (sd, img.id) not in self.prepared)
        if not found:
            return False
        sd, img = found
        last = len(self.internal(img))
        successor = rng.randrange(last)
        ancestor = rng.randrange(successor + 1, last + 1)
        opts = self.opts(n)
        tasks = [opts["taskId"]] + [f"{opts['taskId']}_{k}" for k in range(1, ancestor - successor)]

        def apply() -> None:
            img.chain[successor + 1:ancestor + 1] = []
        return self.go(n, Call(f"mergeSnapshots {sd[:2]}/{img.id[:6]} {img.chain[ancestor][:6]}.."
                               f"{img.chain[successor][:6]} (chain {len(img.chain)})", "mergeSnapshots",
                               (sd, BLANK, BLANK, img.id, img.chain[ancestor], img.chain[successor], False, opts),
                               {0}, tasks, apply, self.reads_through(sd, img)))

    def rule_delete(self, rng: random.Random, n: int = 0) -> Call | bool:
        found = self.pick(rng)
        if not found:
            return False
        sd, img = found
        opts = self.opts(n)
        refusals = ({BUSY} if (sd, img.id) in self.prepared else set()) | (
            {SHARED_IN_USE} if self.users(sd, img.id) else set())
        internal = self.internal(img)
        how = rng.choice(["image", "volume"])
        if how == "volume" and internal:  # a volume below the leaf has a child; the leaf alone stays
            which = rng.choice(["below", "leaf", "all"])
            volumes = {"below": [rng.choice(internal)], "leaf": [img.chain[0]], "all": [img.chain[0], *internal]}
            refusals |= {"below": {BAD_CHILD}, "leaf": {CANNOT_DELETE}, "all": set()}[which]
            args = (sd, BLANK, img.id, volumes[which], False, False, opts)
            text = f"deleteVolume {which} of {sd[:2]}/{img.id[:6]} (chain {len(img.chain)})"
        elif how == "volume":
            args, text = (sd, BLANK, img.id, [img.chain[0]], False, False, opts), f"deleteVolume {sd[:2]}/{img.id[:6]}"
        else:
            args, text = (sd, BLANK, img.id, False, False, opts), f"deleteImage {sd[:2]}/{img.id[:6]}"
        tasks = [opts["taskId"]] + [f"{opts['taskId']}_{k}" for k in range(1, len(internal) + 1)]

        def apply() -> None:
            del self.images[sd][img.id]
        return self.go(n, Call(text + (f" (predicts {sorted(refusals)})" if refusals else ""),
                               "deleteImage" if how == "image" else "deleteVolume", args,
                               refusals or {0}, tasks, apply, self.reads_through(sd, img)))

    def move_refusals(self, sd: str, dst: str, img: Img, op: int) -> set[int]:
        """What moveImage of `img` to `dst` must be refused with (any one of them)."""
        refusals = {BUSY} if op == 2 and (sd, img.id) in self.prepared else set()
        if img.template and img.template not in self.images[dst]:
            refusals.add(NO_IMAGE)
        there = {img.id} | set(self.internal(img))
        if any(there & ({other.id} | set(self.internal(other))) for other in self.images[dst].values()):
            refusals.add(VOLUME_EXISTS)
        return refusals

    def rule_move(self, rng: random.Random, n: int = 0) -> Call | bool:
        sd = rng.choice(DOMAINS)
        dst = DOMAINS[1 - DOMAINS.index(sd)]
        if self.full(dst):
            return False
        opts = self.opts(n)
        if rng.random() < 0.25:
            chosen = [img for _, img in filter(None, (self.pick(rng, sd, test=lambda _, img: not img.is_template)
                                                      for _ in range(rng.randint(1, 3))))]
            chosen = list({img.id: img for img in chosen}.values())
            if not chosen:
                return False
            op, verb = 2, "moveMultipleImages"
            args: tuple = (BLANK, sd, dst, {img.id: False for img in chosen}, BLANK, False, opts)
        else:  # a template in use is copied, never moved
            found = self.pick(rng, sd)
            if not found:
                return False
            chosen = [found[1]]
            op, verb = 2 if rng.random() < 0.5 and not self.users(sd, chosen[0].id) else 1, "moveImage"
            args = (BLANK, sd, dst, chosen[0].id, BLANK, op, False, False, opts)
        refusals = set().union(*(self.move_refusals(sd, dst, img, op) for img in chosen))

        def apply() -> None:
            for img in chosen:
                self.images[dst][img.id] = copy.deepcopy(img)
                if op == 2:
                    del self.images[sd][img.id]
        touches = set().union(*(self.reads_through(sd, img) | self.reads_through(dst, img) for img in chosen))
        return self.go(n, Call(f"{verb} op {op} {sd[:2]} -> {dst[:2]}: {[img.id[:6] for img in chosen]}"
                               + (f" (predicts {sorted(refusals)})" if refusals else ""), verb, args,
                               refusals or {0}, [opts["taskId"]], apply, touches))

    def rule_prepare(self, rng: random.Random) -> bool:
        found = self.pick(rng, test=lambda sd, img: (sd, img.id) not in self.prepared)
        if not found:
            return False
        sd, img = found
        answer = self.irs.prepareImage(sd, BLANK, img.id)
        self.note(f"prepareImage {sd[:2]}/{img.id[:6]} -> {code(answer)}")
        leaf = ok(self.irs.getVolumePath(sd, BLANK, img.id, img.chain[0]))["path"]
        assert ok(answer)["path"] == leaf, answer
        assert [entry["volumeID"] for entry in answer["chain"]] == img.chain[::-1], answer
        self.prepared.add((sd, img.id))
        return True

    def rule_teardown(self, rng: random.Random) -> bool:
        if not self.prepared:
            return False
        sd, img_id = rng.choice(sorted(self.prepared))
        ok(self.irs.teardownImage(sd, BLANK, img_id))
        self.note(f"teardownImage {sd[:2]}/{img_id[:6]}")
        self.prepared.discard((sd, img_id))
        return True

    def rule_kill(self, rng: random.Random) -> bool:
        """Start one to three calls, on images no other of them touches; then kill -9 hsmd, queued behind
        blockers that fill the task threads, or with the tasks in flight. They must come back in
        waitrecover (in flight: or finished before the kill), and finish after recoverTask."""
        queued = rng.random() < 0.5
        blockers = [f"blocker-{self.seed}-{self.step}-{k}" for k in range(POOL)] if queued else []
        for blocker in blockers:
            ok(self.irs.runTestTask([{"seconds": 60}], {"taskId": blocker}))
        if blockers:
            wait_for(lambda: all(ok(self.irs.getTaskStatus(b))["taskStatus"]["state"] == "running"
                                 for b in blockers), WAIT, what="the blockers run")
        planners = [self.rule_create, self.rule_snapshot, self.rule_copy, self.rule_on_template,
                    self.rule_merge, self.rule_delete, self.rule_move]
        started = []
        for n in range(1, rng.randint(1, 3) + 1):
            call = rng.choice(planners)(rng, n)
            if isinstance(call, Call) and self.perform(call) == 0 and call.tasks:
                started += call.tasks
        self.note(f"kill -9 hsmd ({'queued behind blockers' if queued else 'in flight'}: {started})")
        self.stats["kill"] += 1
        self.daemon.kill()
        if rng.random() < float(os.environ.get("HSM_LEGACY_OUTAGE_CALL", 0.5)):  # VDSM polls while hsmd is away
            assert code(self.irs.getTaskStatus(started[0] if started else "none", BLANK)) == 5015
        self.daemon.start()
        for task in started + blockers:
            answer = self.irs.getTaskStatus(task)
            assert code(answer) == 0, f"task {task} after the restart: {answer}"
            state = answer["taskStatus"]["state"]
            allowed = ("waitrecover",) if queued or task in blockers else ("waitrecover", "finished")
            assert state in allowed, f"task {task} after the restart: {answer['taskStatus']}"
            if task in blockers:
                ok(self.irs.revertTask(task, BLANK))
            elif state == "waitrecover":
                ok(self.irs.recoverTask(task))
        for blocker in blockers:
            wait_for(lambda b=blocker: ok(self.irs.getTaskStatus(b))["taskStatus"]["state"] in DONE,
                     WAIT, what=f"{blocker} reverted")
            ok(self.irs.clearTask(blocker, BLANK))
        return True

    # -- after every step ---------------------------------------------------------

    def settle(self) -> None:
        """Wait for every task awaited: finished with code 0, then cleared as VDSM clears its tasks."""
        for task in sorted(self.awaited):
            status = self.finished(task)
            assert status["code"] == 0, f"task {task}: {status}"
            ok(self.irs.clearTask(task, BLANK))
            del self.awaited[task]
        self.busy.clear()
        left = ok(self.irs.getAllTasks())["tasks"]
        assert not left, f"tasks the model does not know: {left}"

    def finished(self, task: str) -> dict:
        seen: list[dict] = [{}]

        def ended() -> bool:
            seen[0] = ok(self.irs.getTaskStatus(task, BLANK))["taskStatus"]
            return seen[0]["taskState"] == "finished"
        wait_for(ended, WAIT, what=lambda: f"task {task} to finish: {seen[0]}")
        return seen[0]

    def check(self) -> None:
        for sd in DOMAINS:
            listed, model = sorted(ok(self.irs.getImagesList(sd))["imageslist"]), sorted(self.images[sd])
            assert listed == model, f"getImagesList {sd}: {listed}, the model {model}"
            for img in self.images[sd].values():
                self.check_image(sd, img)

    def check_image(self, sd: str, img: Img) -> None:
        chain = ok(self.irs.getVolumesList(sd, BLANK, img.id))["uuidlist"]
        assert chain == img.chain, f"getVolumesList {sd}/{img.id}: {chain}, the model {img.chain}"
        leaf = img.chain[0]
        path = ok(self.irs.getVolumePath(sd, BLANK, img.id, leaf))["path"]
        wrong = reads(path, self.formats[leaf], img.data)
        assert not wrong, f"{sd}/{img.id} ({leaf}) should read {img.data}: {wrong}"
        if img.is_template:
            assert img.data == self.frozen[leaf], f"template {img.id}: the model changed it"
            was = self.digests.setdefault((sd, img.id), digest(path))
            assert digest(path) == was, f"template {sd}/{img.id}: its volume file {path} changed"

    def finish(self) -> None:
        """Tear down, delete every image (templates once unused), and see every volume file go."""
        self.note("finish: teardown and delete everything")
        for sd, img_id in sorted(self.prepared):
            ok(self.irs.teardownImage(sd, BLANK, img_id))
        self.prepared.clear()
        for templates in (False, True):  # a template goes once no image is made on it
            for sd in DOMAINS:
                for img in sorted(self.images[sd].values(), key=lambda img: img.id):
                    if img.is_template != templates:
                        continue
                    opts = self.opts()
                    tasks = [opts["taskId"]] + [f"{opts['taskId']}_{k}" for k in range(1, len(self.internal(img)) + 1)]
                    self.perform(Call(f"deleteImage {sd[:2]}/{img.id[:6]}", "deleteImage",
                                      (sd, BLANK, img.id, False, False, opts), {0}, tasks))
            self.settle()
        for sd in DOMAINS:
            self.images[sd].clear()
            assert ok(self.irs.getImagesList(sd))["imageslist"] == []
            folder = self.volumes_folder(sd)
            wait_for(lambda folder=folder: os.listdir(folder) == [], WAIT,
                     what=lambda folder=folder: f"{folder} empty: still {os.listdir(folder)}")
        self.irs.close()


def walk(make_hsmd, seed: int, steps: int) -> None:
    daemon = make_hsmd("hsmd", config={"tasks": {"thread_pool_size": POOL, "diagnostics": True}})
    Walk(daemon, daemon.root, seed, steps).run()
    daemon.stop()


@pytest.mark.timeout(600)  # about a minute on a 2-core machine
def test_legacy_model_walk(make_hsmd):
    walk(make_hsmd, int(os.environ.get("HSM_MODEL_SEED", CI_SEED)), int(os.environ.get("HSM_MODEL_STEPS", CI_STEPS)))
