"""The records of a block repository: numbered slots in its metadata LV, each written in two copies.

A block device has no rename, so a record cannot be swapped in whole the way
a file's is (hsm.atomicfile). Each slot holds two copies of COPY bytes. A
write goes to the copy that does not hold the newest version, with a sequence
number one higher, and is durable when it returns (O_DIRECT | O_DSYNC). A
write torn by a crash damages only the copy it was writing: the other still
holds the version before, whose checksum holds. A read takes the valid copy
with the highest sequence.

A copy (little-endian): magic, the repository's uuid, the image id ("" for
the repository record and for a free slot), slot number, sequence, kind
(record or free), payload length, CRC-32 of all of that and the payload, then
the payload (the record's JSON). The repository's uuid in every copy keeps
slots left on a LUN by an earlier repository from ever being read as ours.

Slot 0 holds the repository record; images take the lowest free slot from 1
on. A slot once written is never all zeros again (a freed one holds a free
copy), so the slots in use are always within the first slots ever written:
loading reads from the start and stops at the first chunk that was never
written. The LV is zeroed when the repository is made.
"""

from __future__ import annotations

import heapq
import logging
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hsm.ids import is_id
from hsm.storage.ioprocess import IOProcess

log = logging.getLogger("hsm.storage.slots")

MAGIC = b"HSMSLOT1"
COPY = 16 << 10             # bytes of one copy; a slot is two
SLOT = 2 * COPY
CHUNK_SLOTS = 128           # slots read at once while loading (4 MiB)
_HEADER = struct.Struct("<8s36s36sIQBI")  # magic, repo uuid, image id, slot, sequence, kind, length
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size
MAX_PAYLOAD = COPY - HEADER_BYTES
FREE, RECORD = 0, 1


class SlotsFull(Exception):
    """Every slot of the metadata LV holds a record."""


class RecordTooLarge(Exception):
    """A record longer than a slot's copy takes."""


@dataclass(frozen=True)
class Copy:
    image_id: str
    slot: int
    sequence: int
    kind: int
    payload: bytes


def encode(repo_uuid: str, copy: Copy, size: int = COPY) -> bytes:
    """A copy of `size` bytes (COPY for a record slot)."""
    if len(copy.payload) > size - HEADER_BYTES:
        raise RecordTooLarge(f"{len(copy.payload)} bytes, at most {size - HEADER_BYTES} in a block repository's slot")
    header = _HEADER.pack(MAGIC, repo_uuid.encode(), copy.image_id.encode(), copy.slot, copy.sequence, copy.kind,
                          len(copy.payload))
    crc = zlib.crc32(header + copy.payload)
    return (header + _CRC.pack(crc) + copy.payload).ljust(size, b"\0")


def decode(repo_uuid: str, slot: int, data: bytes) -> Copy | None | str:
    """The copy in `data`; None when it was never written (no magic); a string saying why when it is
    damaged or not this repository's slot `slot`."""
    if len(data) < HEADER_BYTES or data[:len(MAGIC)] != MAGIC:
        return None if not data[:len(MAGIC)].strip(b"\0") else "no slot header"
    magic, owner, image_id, number, sequence, kind, length = _HEADER.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if length > len(data) - HEADER_BYTES:
        return f"payload length {length} is past the slot"
    payload = data[HEADER_BYTES:HEADER_BYTES + length]
    if zlib.crc32(data[:_HEADER.size] + payload) != crc:
        return "checksum mismatch"
    if owner.decode("ascii", "replace") != repo_uuid:
        return None  # another (earlier) repository's: as good as never written
    if number != slot or kind not in (FREE, RECORD):
        return f"slot number {number} or kind {kind} is wrong"
    name = image_id.rstrip(b"\0").decode("ascii", "replace")
    if name and not is_id(name):
        return "the image id is not valid"
    return Copy(name, slot, sequence, kind, payload)


@dataclass
class Slot:
    """What a slot holds now, as read: the newest valid copy, and which copy the next write goes to."""
    number: int
    newest: Copy | None   # None: never written
    next_copy: int        # 0 or 1
    damage: str = ""      # both copies damaged: why (the slot is kept, never reused)


def read_slot(repo_uuid: str, number: int, data: bytes, size: int = COPY) -> Slot:
    """A slot from its two copies of `size` bytes each (COPY for a record slot)."""
    copies = [decode(repo_uuid, number, data[i * size:(i + 1) * size]) for i in (0, 1)]
    valid = [(c.sequence, i, c) for i, c in enumerate(copies) if isinstance(c, Copy)]
    if valid:
        _, index, newest = max(valid)
        return Slot(number, newest, 1 - index)
    damage = "; ".join(c for c in copies if isinstance(c, str))
    return Slot(number, None, 0, damage)


def write_next(write_at: Callable[[str, int, bytes], None], device: str, offset: int, size: int, repo_uuid: str,
               known: Slot, image_id: str, kind: int, payload: bytes) -> Slot:
    """Write the next version of slot `known`, whose two copies of `size` bytes start at `offset` of `device`,
    into the copy that does not hold the newest version; the slot as it is then."""
    sequence = known.newest.sequence + 1 if known.newest is not None else 1
    copy = Copy(image_id, known.number, sequence, kind, payload)
    write_at(device, offset + known.next_copy * size, encode(repo_uuid, copy, size))
    return Slot(known.number, copy, 1 - known.next_copy)


class SlotStore:
    """The slots of one metadata LV (a block device hsmd may write), through the repository's IOProcess.

    Thread-safe: one lock orders the writes and the allocation of slots. `write_at` writes the bytes of a
    slot: the IOProcess's, or on a repository many hosts use the metadata-writer lease's fenced write
    (hsm.leases.writer.Writer.write_at), where another host's writes are learned by reread().
    """

    def __init__(self, io: IOProcess, device: str, repo_uuid: str, size: int) -> None:
        self._io = io
        self.write_at: Callable[[str, int, bytes], None] = io.write_at
        self.device = device
        self._uuid = repo_uuid
        self.capacity = size // SLOT
        self._lock = threading.Lock()
        self._slots: dict[int, Slot] = {}       # every slot ever written
        self._by_image: dict[str, int] = {}
        self._free: list[int] = []              # a heap of freed slots
        self._end = 1                           # the first slot never written (0 is the repository's)

    @property
    def damaged(self) -> dict[int, str]:
        """Slots whose two copies are both damaged: {slot: why}."""
        return {n: s.damage for n, s in self._slots.items() if s.damage}

    def load(self) -> tuple[dict[str, bytes], dict[int, str]]:
        """Read every slot in use: ({image id: record}, {damaged slot: why}). Slot 0 is left to repository()."""
        found: dict[str, bytes] = {}
        with self._lock:
            self._slots, self._by_image, self._free, self._end = {}, {}, [], 1
            first = 0
            while first < self.capacity:
                count = min(CHUNK_SLOTS, self.capacity - first)
                data = self._io.read_at(self.device, first * SLOT, count * SLOT)
                written = False
                for number in range(first, first + count):
                    slot = read_slot(self._uuid, number, data[(number - first) * SLOT:(number - first + 1) * SLOT])
                    if slot.newest is None and not slot.damage:
                        continue
                    written = True
                    self._slots[number] = slot
                    self._end = max(self._end, number + 1)
                    if number == 0:
                        continue
                    newest = slot.newest
                    if newest is not None and newest.kind == RECORD and newest.image_id not in self._by_image:
                        self._by_image[newest.image_id] = number
                        found[newest.image_id] = newest.payload
                    elif newest is not None and newest.kind == RECORD:
                        log.error("Slot %d holds image %s, which slot %d holds too: kept, not read", number,
                                  newest.image_id, self._by_image[newest.image_id])
                        slot.damage = f"a second record of image {newest.image_id}"
                    elif newest is not None:
                        heapq.heappush(self._free, number)
                if not written:
                    break
                first += count
            damaged = self.damaged
        return found, damaged

    def repository(self) -> bytes | None:
        """The repository record in slot 0, read from storage now; None if there is none."""
        slot = self._read(0)
        return slot.newest.payload if slot.newest is not None and slot.newest.kind == RECORD else None

    def write_repository(self, payload: bytes) -> None:
        with self._lock:
            self._write(0, "", RECORD, payload)

    def read(self, image_id: str) -> bytes | None:
        """The image's record as storage holds it now; None when no slot holds it."""
        with self._lock:
            number = self._by_image.get(image_id)
        if number is None:
            return None
        slot = self._read(number)
        newest = slot.newest
        if newest is None or newest.kind != RECORD or newest.image_id != image_id:
            return None
        return newest.payload

    def write(self, image_id: str, payload: bytes) -> int:
        """Write the image's record durably: into its slot, or a free one (SlotsFull when none is left); the
        slot's number."""
        if len(payload) > MAX_PAYLOAD:
            raise RecordTooLarge(f"{len(payload)} bytes, at most {MAX_PAYLOAD} in a block repository's slot")
        with self._lock:
            number = self._by_image.get(image_id)
            new = number is None
            if number is None:
                number = self._allocate()
            try:
                self._write(number, image_id, RECORD, payload)
            except BaseException:
                if new:  # not this image's: free for the next record (a torn copy there is overwritten)
                    self._slots.setdefault(number, Slot(number, None, 0))
                    heapq.heappush(self._free, number)
                raise
            self._by_image[image_id] = number
            return number

    def free(self, image_id: str) -> int | None:
        """Mark the image's slot free, durably; its number is used again. The number (None: no slot held it)."""
        with self._lock:
            number = self._by_image.get(image_id)
            if number is None:
                return None
            self._write(number, "", FREE, b"")
            del self._by_image[image_id]
            heapq.heappush(self._free, number)
            return number

    def reread(self, numbers: Iterable[int]) -> None:
        """Read these slots again (another host wrote them) and make what is known of them (which image each
        holds, which are free) say what they hold now."""
        with self._lock:
            for number in sorted(set(numbers)):
                if not 0 < number < self.capacity:
                    continue
                slot = self._read(number)
                before = self._slots.get(number)
                held = before.newest.image_id if before is not None and before.newest is not None else ""
                if held and self._by_image.get(held) == number:
                    del self._by_image[held]
                self._slots[number] = slot
                self._end = max(self._end, number + 1)
                newest = slot.newest
                if newest is not None and newest.kind == RECORD:
                    self._by_image[newest.image_id] = number
                elif newest is not None:
                    heapq.heappush(self._free, number)  # a stale entry for it is passed over by _allocate
    def slot_of(self, image_id: str) -> int | None:
        """The slot holding the image's record, as known here."""
        with self._lock:
            return self._by_image.get(image_id)

    def in_use(self) -> int:
        with self._lock:
            return len(self._by_image)

    def _allocate(self) -> int:
        while self._free:
            number = heapq.heappop(self._free)
            slot = self._slots[number]
            if not slot.damage and (slot.newest is None or slot.newest.kind == FREE):
                return number
        if self._end >= self.capacity:
            raise SlotsFull(f"all {self.capacity - 1} record slots of the metadata LV are in use")
        self._end += 1
        return self._end - 1

    def _read(self, number: int) -> Slot:
        return read_slot(self._uuid, number, self._io.read_at(self.device, number * SLOT, SLOT))

    def _write(self, number: int, image_id: str, kind: int, payload: bytes) -> None:
        known = self._slots.get(number) or Slot(number, None, 0)
        self._slots[number] = write_next(self.write_at, self.device, number * SLOT, COPY, self._uuid, known,
                                         image_id, kind, payload)
