"""The metadata-writer lease of a shared repository, and what keeps every host's index true to storage.

Many hosts use one nfs-1 or posixfs-1 repository; each keeps an index of its image
records in memory. A host changes records only while it holds the repository's
metadata-writer lease (sanlock's resource SDM in the leases area), and it holds it
only for the commits it has to make: the lease goes back as soon as no commit of
this host waits for it (or after MAX_HOLD seconds of commits, so other hosts get
their turn).

Coherence: the record `leases/generation` says which image records changed, and
when. The holder marks it open (the next generation, its host id) before it
writes its first record, and closes it with the ids it changed when it lets the
lease go. A host that takes the lease reads it first: records other hosts changed
since the generation it knows are read again; an open record (its holder died
mid-commit) or a gap past what the record remembers makes it read every record.
So a check made under the lease sees what every host committed before it.

The lease is held by the repository's I/O helper (hsm.storage.ioworker), the
process that writes the records, and the helper writes them only while it holds
it: when the host loses its lockspace, sanlock kills that helper, and no record is
written after the lease is lost. The next commit starts a new helper and takes the
lease again, or fails with 651.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Protocol

from hsm.errors import AcquireHostIdFailure, AcquireLockFailure, HsmError, StorageTimeout
from hsm.ids import is_id
from hsm.leases.lockspace import (
    HELD_ELSEWHERE,
    LEASE_OFFSET,
    SANLK_ACQUIRE_IDDISK,
    SANLK_ACQUIRE_LOCKSPACE,
    WRITER,
    Lockspace,
)
from hsm.records import parse_object
from hsm.storage.ioprocess import IOProcess

log = logging.getLogger("hsm.leases")

GENERATION = "generation"   # in the leases folder
REMEMBERED = 1024           # changes the generation record keeps: a host further behind reads every record
MAX_HOLD = 0.5              # seconds of back-to-back commits before the lease goes back to let other hosts in
POLL_MAX = 0.1              # seconds at most between two tries of a host waiting for the lease
TURN = 0.25                 # seconds a host that let the lease go for its turn waits before taking it again
# sanlock's answers to an acquire that mean "try again"
BUSY = {*HELD_ELSEWHERE, SANLK_ACQUIRE_IDDISK, errno.EAGAIN, errno.EBUSY}


Change = tuple[int, str, int | None]  # (generation, image id, the slot it touched on a block repository or None)


class Generation:
    """What the generation record says: {generation, host, open, changed: [[generation, image id(, slot)], ...]}:
    a block repository's changes name the record slots they wrote too (hsm.storage.slots), so that other hosts
    read those slots again and know where every record is."""

    def __init__(self, number: int = 0, host: int = 0, is_open: bool = False,
                 changed: list[Change] | None = None) -> None:
        self.number, self.host, self.open = number, host, is_open
        self.changed = changed or []

    @classmethod
    def parse(cls, data: bytes) -> Generation:
        """ValueError unless every field is what hsm writes (another host wrote it: input, not truth)."""
        record = parse_object(data)
        number, host, is_open, changed = (record.get(key) for key in ("generation", "host", "open", "changed"))
        if type(number) is not int or number < 0 or type(host) is not int or not 0 <= host <= 2000 \
                or type(is_open) is not bool or not isinstance(changed, list) or len(changed) > REMEMBERED:
            raise ValueError("bad generation, host, open or changed")
        entries: list[Change] = []
        for entry in changed:
            if not (isinstance(entry, list) and len(entry) in (2, 3) and type(entry[0]) is int
                    and 0 < entry[0] <= number and is_id(entry[1])
                    and (len(entry) == 2 or (type(entry[2]) is int and 0 < entry[2] < 1 << 24))):
                raise ValueError(f"bad change entry {entry!r:.80}")
            entries.append((entry[0], entry[1], entry[2] if len(entry) == 3 else None))
        return cls(number, host, is_open, entries)

    def to_json(self) -> bytes:
        kept = self.changed[-REMEMBERED:]
        if len(self.changed) > REMEMBERED:  # a generation is remembered whole or not at all
            kept = [entry for entry in kept if entry[0] != self.changed[-REMEMBERED - 1][0]]
        return json.dumps({"generation": self.number, "host": self.host, "open": self.open,
                           "changed": [[number, image_id, *([] if slot is None else [slot])]
                                       for number, image_id, slot in kept]}).encode()

    def changed_since(self, known: int) -> tuple[set[str], set[int]] | None:
        """(the image ids changed after generation `known`, the record slots those changes wrote), or None when
        this record no longer remembers."""
        if known > self.number:
            return None  # someone wrote an older record over ours: trust nothing
        if known == self.number:
            return set(), set()
        remembered = {entry[0] for entry in self.changed}
        if not all(number in remembered for number in range(known + 1, self.number + 1)):
            return None
        later = [entry for entry in self.changed if entry[0] > known]
        return {image_id for _, image_id, _ in later}, {slot for _, _, slot in later if slot is not None}


class GenerationFile:
    """Where a shared file repository keeps its generation record: the file leases/generation."""

    def __init__(self, io: IOProcess, folder: str) -> None:
        self.io = io
        self.path = os.path.join(folder, GENERATION)

    def read(self) -> bytes:
        """The record's bytes (FileNotFoundError when there is none)."""
        return self.io.read(self.path, 1 << 20)

    def write(self, writer: Writer, data: bytes) -> None:
        writer.write(self.path, data)


class GenerationPlace(Protocol):
    """Where the generation record is (a file, or copies on a block device: hsm.storage.block)."""
    path: str  # for messages

    def read(self) -> bytes: ...

    def write(self, writer: Writer, data: bytes) -> None: ...


class Writer:
    """This host's side of one repository's metadata-writer lease (see the module's text)."""

    def __init__(self, io: IOProcess, place: GenerationPlace, sync_ids: Callable[[set[str], AbstractSet[int]], None],
                 sync_all: Callable[[], None], acquire_timeout: float = 60.0) -> None:
        self.lockspace: Lockspace | None = None  # set once the repository's uuid is known (connect)
        self.io = io
        self.place = place
        self.path = place.path
        self._sync_ids = sync_ids    # read these records (and record slots) again
        self._sync_all = sync_all    # read every record again
        self.acquire_timeout = acquire_timeout
        self.known: int | None = None  # the generation the index is true to (None: unknown, read everything)
        self._held_since = 0.0         # monotonic time the lease was taken; 0: not held
        self._current: Generation | None = None  # what storage holds while we hold the lease
        self._changed: dict[str, set[int]] = {}  # records changed in this hold: the slots each change wrote
        self.pinned = False                      # kept past commits (CommitLock.pin: the SPM role)
        self._turn = 0.0                         # monotonic time before which this host leaves the lease to others

    @property
    def held(self) -> bool:
        return self._held_since > 0

    def read(self) -> Generation | None:
        """The generation record on storage; None when there is none or it cannot be trusted."""
        try:
            return Generation.parse(self.place.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("%s cannot be used (%s): every record is read again", self.path, e)
            return None

    def learn(self) -> None:
        """Before the records are read (connect): the generation they are at least as new as."""
        current = self.read()
        self.known = current.number if current is not None and not current.open else None

    @property
    def _space(self) -> Lockspace:
        if self.lockspace is None:
            raise AcquireHostIdFailure(f"{self.path}: the repository has no lockspace")
        return self.lockspace

    # -- the lease ------------------------------------------------------------

    def take(self, deadline: float) -> bool:
        """Hold the lease (True when it was taken now: sync() next, under the index lock). Called in the
        commit order, before the index lock."""
        if self.held:
            return False
        pause = self._turn - time.monotonic()
        if pause > 0:  # this host had a long turn: others, polling, take theirs first
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        self._take(deadline)
        self._held_since = time.monotonic()
        return True

    def _take(self, deadline: float) -> None:
        name, paths = self._space.name, self._space.paths
        pause = 0.002
        while True:
            left = deadline - time.monotonic()
            try:
                joined = self._space.joined()
            except Exception as e:  # no daemon to ask (sanlock.SanlockException): nothing to wait for
                raise AcquireHostIdFailure(f"repository {name.decode()}: sanlock cannot say whether this host is in "
                                           f"its lockspace ({e})") from None
            if not joined:
                if left <= 0:
                    raise AcquireHostIdFailure(f"repository {name.decode()}: this host has not joined its lockspace "
                                               f"(host id {self._space.host_id})")
            else:
                try:
                    self.io.lease_acquire(name, WRITER, paths.leases, LEASE_OFFSET, timeout=max(left, 1.0) + 90)
                    return
                except StorageTimeout:
                    self._give_back()  # the helper may get it after all: never keep it unknowingly
                    raise
                except OSError as e:
                    number = abs(e.errno or 0)
                    if number == SANLK_ACQUIRE_LOCKSPACE and left <= 0:  # left the lockspace since: lost
                        raise AcquireHostIdFailure(f"repository {name.decode()}: this host is not in its "
                                                   "lockspace") from None
                    if number not in BUSY and number != SANLK_ACQUIRE_LOCKSPACE:
                        raise AcquireLockFailure(f"repository {name.decode()}: sanlock refused the "
                                                 f"metadata-writer lease ({_sanlock_error(e)})") from None
                    if left <= 0:
                        holder = self._space.state().get("writer") or "another host"
                        raise AcquireLockFailure(f"repository {name.decode()}: the metadata-writer lease stayed "
                                                 f"with host {holder} for {self.acquire_timeout:.0f} s") from None
            time.sleep(min(pause * random.uniform(0.5, 1.0), max(left, 0.001)))
            pause = min(pause * 2, POLL_MAX)

    def _give_back(self) -> None:
        try:
            self.io.lease_release(self._space.name, WRITER, self._space.paths.leases, LEASE_OFFSET)
        except (OSError, StorageTimeout) as e:  # a helper that died took the lease with it
            log.warning("Repository %s: cannot release the metadata-writer lease: %s", self._space.name.decode(), e)

    def release(self, turn: bool = False) -> None:
        """Close the generation record if this hold changed records, and let the lease go. `turn`: commits of
        this host wait for it still: they take it again only after TURN seconds, so that other hosts (which
        poll every POLL_MAX seconds at most) get their turn."""
        if not self.held:
            return
        try:
            self.publish()
        finally:
            self._current, self._changed, self._held_since = None, {}, 0.0
            self._give_back()
            if turn:
                self._turn = time.monotonic() + TURN

    def publish(self) -> None:
        """Close the generation record if this hold changed records: other hosts read them from now on."""
        try:
            if self._current is not None and self._current.open:
                self._current.open = False
                number = self._current.number
                for image_id, slots in sorted(self._changed.items()):
                    self._current.changed.extend([(number, image_id, slot) for slot in sorted(slots)] or
                                                 [(number, image_id, None)])
                self._changed = {}
                self._write(self._current)
                self.known = self._current.number
        except (OSError, HsmError) as e:  # others read every record then
            log.warning("%s cannot be closed: %s", self.path, e)
            self.known = None

    def linger(self) -> bool:
        """Whether the next local commit may keep the lease (it has not been held long)."""
        return self.held and time.monotonic() - self._held_since < MAX_HOLD

    def follow(self) -> None:
        """Without the lease: records changed by other hosts' finished holds are read again, so that answers
        here stay current between this host's own commits (an open hold is read once it closes)."""
        current = self.read()
        if current is None or current.open or current.number == self.known:
            return
        self._catch_up(current)
        self.known = current.number

    def sync(self) -> None:
        """Right after take(), under the index lock: make the index true to storage."""
        try:
            self._sync()
        except BaseException:
            self.release()
            raise

    def _sync(self) -> None:
        current = self.read()
        if current is not None and current.open:
            log.warning("Repository %s: host %d died while changing records: every record is read again",
                        self._space.name.decode(), current.host)
        self._catch_up(current)
        self._current = current or Generation()
        self.known = self._current.number

    def _catch_up(self, current: Generation | None) -> None:
        """Read again the records changed since the generation the index knows; all of them when that
        cannot be told (no usable record, one left open, or one that no longer remembers that far)."""
        changed = None
        if current is not None and not current.open and self.known is not None:
            changed = current.changed_since(self.known)
        if changed is None:
            self._sync_all()
        elif changed[0]:
            self._sync_ids(*changed)

    # -- fenced writes ----------------------------------------------------------

    def _write(self, generation: Generation) -> None:
        self.place.write(self, generation.to_json())

    def changing(self, image_id: str, slot: int | None = None) -> None:
        """Before a record is written or removed: mark the generation record open (once per hold). A block
        repository says again after the write which record `slot` it wrote."""
        if not self.held or self._current is None:
            raise AcquireLockFailure(f"repository {self._space.name.decode()}: a record change outside the "
                                     f"metadata-writer lease")
        if not self._current.open:
            opened = Generation(self._current.number + 1, self._space.host_id, True, list(self._current.changed))
            self._write(opened)
            self._current = opened
        slots = self._changed.setdefault(image_id, set())
        if slot is not None:
            slots.add(slot)

    def write(self, path: str, data: bytes) -> None:
        """Write a record, only if the helper still holds the lease (651 otherwise)."""
        self._fenced(self.io.lease_write, path, data)

    def write_at(self, device: str, offset: int, data: bytes) -> None:
        """Write bytes of a block device (a record slot), only if the helper still holds the lease."""
        self._fenced(self.io.lease_write_at, device, offset, data)

    def remove(self, path: str) -> None:
        self._fenced(self.io.lease_remove, path)

    def _fenced(self, op: Callable[..., None], *args: object) -> None:
        try:
            op(self._space.name, WRITER, *args)
        except OSError as e:
            if e.errno == errno.ENOLCK:  # the helper that held the lease is gone (sanlock killed it, or a hang)
                self._held_since, self._current, self.pinned = 0.0, None, False
                self.known = None
                raise AcquireLockFailure(f"repository {self._space.name.decode()}: the metadata-writer lease "
                                         f"was lost; nothing was written") from None
            raise


def _sanlock_error(e: OSError) -> str:
    return {errno.ENOSPC: "this host is not in the lockspace", errno.ECONNREFUSED: "its daemon does not answer",
            errno.ENOENT: "its daemon does not answer"}.get(abs(e.errno or 0), f"error {e.errno}")


class CommitLock:
    """A repository's commit lock: a check and the record writes it allows, as one step.

    Held by one thread at a time, re-entrant, as the RLock it wraps (the repository's
    index lock). On a shared repository (`writer` set) the outermost entry also takes
    the metadata-writer lease and brings the index up to date, and the outermost exit
    lets the lease go unless another commit of this host is already waiting for it.
    """

    def __init__(self, inner: threading.RLock) -> None:
        self._inner = inner
        self._order = threading.RLock()  # commits of this host, one at a time; taken before the index lock,
        # and held while waiting for the lease, so that the index lock is held only while a commit runs
        self.writer: Writer | None = None
        self._depth = 0    # the owning thread's nesting
        self._waiting = 0  # threads waiting to enter
        self._count = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        started = time.monotonic()
        with self._count:
            self._waiting += 1
        try:
            if not self._order.acquire(blocking, timeout):
                return False
        finally:
            with self._count:
                self._waiting -= 1
        self._depth += 1
        writer = self.writer
        try:
            taken = False
            if self._depth == 1 and writer is not None:
                taken = writer.take(started + (timeout if timeout >= 0 else writer.acquire_timeout))
            left = -1 if timeout < 0 else max(0.0, started + timeout - time.monotonic())
            if not self._inner.acquire(True, left):
                raise TimeoutError
            try:
                if taken and writer is not None:
                    writer.sync()
            except BaseException:
                self._inner.release()
                raise
        except BaseException as e:
            if self._depth == 1 and writer is not None and writer.held and not writer.pinned:
                writer.release()
            self._depth -= 1
            self._order.release()
            if isinstance(e, TimeoutError):
                return False
            raise
        return True

    def release(self) -> None:
        writer = self.writer
        self._inner.release()
        if self._depth == 1 and writer is not None and writer.held:
            with self._count:
                waiting = self._waiting > 0
            if writer.pinned:  # held for long: what it changed is published commit by commit
                writer.publish()
            elif not (waiting and writer.linger()):
                writer.release(turn=waiting)
        self._depth -= 1
        self._order.release()

    def __enter__(self) -> CommitLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def pin(self, timeout: float | None = None) -> None:
        """Take the lease and keep it past commits until unpin(): VDSM's SPM role (spmStart) on a shared
        repository; other hosts' commits wait meanwhile. A host holding it commits without asking sanlock."""
        writer = self.writer
        if writer is None:
            raise ValueError("not a shared repository")
        if not self.acquire(timeout=-1 if timeout is None else timeout):
            raise AcquireLockFailure(f"{writer.path}: this host's commits kept the repository busy")
        try:
            writer.pinned = True
        finally:
            self.release()

    def unpin(self) -> None:
        """Let the lease go at the end of the next commit, or now when none runs (spmStop)."""
        writer = self.writer
        if writer is None:
            return
        with self._order:
            writer.pinned = False
            if self._depth == 0 and writer.held:
                writer.release()

    def idle(self) -> None:
        """Between commits (the repository's monitor calls it): let go of a lease kept for a commit that then
        gave up waiting, and read again what other hosts changed since (hsm.leases.writer.Writer.follow)."""
        writer = self.writer
        if writer is None or not self._order.acquire(timeout=1):
            return
        try:
            if self._depth == 0 and not writer.pinned:
                if writer.held:
                    writer.release()
                with self._inner:
                    writer.follow()
        finally:
            self._order.release()
