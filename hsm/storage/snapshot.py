"""The index snapshot of a localfs-1 repository: its records in one file, so a start reads one file, not one per image.

A repository of 100,000 images has 100,000 record files; reading them is most
of a start (25 s here). hsmd keeps, in its state directory (its own, mode
0700), a snapshot of the index: every record in a compact row form, written
whole (atomic_write) at disconnect, at stop, and when the journal has grown;
and a journal, one line appended for each record hsmd writes or removes after
the snapshot, before the verb answers. A start reads the snapshot and replays
the journal: the index is then what storage held when hsmd last wrote it,
every acknowledged change included (a kill -9 leaves the journal in the page
cache). It is used only when:

- it is hsmd's own: its version, the repository's uuid, the CRC-32 of its
  rows right, every row and journal line well formed (else the records are
  read one by one, as before, and a new snapshot written);
- the machine was not restarted since it was written (the kernel's boot id):
  a journal line not yet on disk is lost with a power cut, so after a reboot
  the records are read one by one.

What others changed while hsmd was down (an admin editing a record, a copied
repository) is found by a scan of every record in the background after such a
start, which refreshes what differs (logged as changed behind hsmd's back).
Until the scan is done, an image a verb names is read from storage first
(FileRepository.verify), and no fix deletes a volume file (FileRepository
.wait_scanned): a record the snapshot does not know may read through it.
While hsmd runs, changes behind its back are seen as before (inotify).

Shared (nfs-1, posixfs-1) and block repositories are read whole at connect:
other hosts change them while this one is down.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from hsm.atomicfile import atomic_write
from hsm.ids import is_id
from hsm.storage import intents
from hsm.storage.image import Image, Volume, shared
from hsm.storage.prepared import boot_id

log = logging.getLogger("hsm.storage.snapshot")

VERSION = 1
SNAPSHOT = "snapshot"
JOURNAL = "journal"
ROWS_PER_LINE = 1000  # rows parsed per json.loads: few calls, and never the whole file's objects at once
COMPACT_AFTER = 20000  # journal lines after which the snapshot is written again (or a quarter of the images)


def to_row(image: Image) -> list:
    """The image as a snapshot row: its record's fields in a fixed order."""
    return [image.id, image.kind, image.size, [[vol.id, vol.image, vol.format] for vol in image.volumes],
            image.base, image.userData, image.state, intents.to_json(image.intent), image.removed, image.hostId,
            image.stage, image.percentComplete, image.lastError, image.created, image.generation, image.task,
            image.verb, image.rewriting, image.origin]


def from_row(row: list) -> Image:
    """The image of a snapshot row (hsmd's own file, CRC-checked; its records were checked when read):
    a row that is not one raises (TypeError, ValueError, KeyError, IndexError)."""
    (image_id, kind, size, volumes, base, user_data, state, intent, removed, host_id, stage, percent, last_error,
     created, generation, task, verb, rewriting, origin) = row
    if not is_id(image_id):
        raise ValueError(f"row of {str(image_id)[:80]!r}")
    return Image(image_id, shared(kind), size,
                 [Volume(vol_id, image_id if owner == image_id else owner, shared(fmt))
                  for vol_id, owner, fmt in volumes],
                 base, user_data, shared(state), intents.from_json(intent), removed, host_id, shared(stage),
                 percent, last_error, created, generation, task, shared(verb), rewriting, origin)


@dataclass
class Loaded:
    images: dict[str, Image]
    unreadable: dict[str, str]


class IndexSnapshot:
    """The snapshot and journal of one repository's index, in `folder` (hsmd's state directory)."""

    def __init__(self, folder: str, repo_uuid: str) -> None:
        self.folder = folder
        self.uuid = repo_uuid
        self._lock = threading.Lock()  # the journal file and its number
        self._journal: int | None = None  # the open journal's file descriptor
        self._number = 0  # the journal hsmd appends to
        self.lines = 0  # appended since the snapshot

    # -- reading --------------------------------------------------------

    def load(self) -> Loaded | None:
        """The index as the snapshot and its journals say, or None (with the reason logged) when they
        cannot be used; from then on appends go to a new journal after the ones read."""
        try:
            loaded, first = self._read()
            self._number = first
            for number in self._journals():
                if number >= first:
                    self.lines += self._replay(number, loaded)
                    self._number = number
        except FileNotFoundError:
            log.info("Repository %s has no index snapshot yet: its records are read one by one", self.uuid)
            return None
        except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
            log.warning("The index snapshot of repository %s cannot be used (%s): its records are read one by one",
                        self.uuid, e)
            self.discard()
            return None
        self._number += 1
        return loaded

    def _read(self) -> tuple[Loaded, int]:
        """The snapshot's images, a line of rows at a time (never the whole file's bytes and objects at
        once); the heap they used is given back to the system after (release_memory)."""
        with open(os.path.join(self.folder, SNAPSHOT), "rb") as f:
            header = json.loads(f.readline())
            expected = {"version": VERSION, "uuid": self.uuid, "boot": boot_id()}
            wrong = [name for name, value in expected.items() if header.get(name) != value]
            if wrong:
                raise ValueError(f"its {', '.join(wrong)} differ (the machine restarted, or another repository)")
            loaded, crc = Loaded({}, dict(header["unreadable"])), 0
            for line in f:
                crc = zlib.crc32(line, crc)
                for row in json.loads(line):
                    image = from_row(row)
                    loaded.images[image.id] = image
        release_memory()
        if crc != header.get("crc"):
            raise ValueError("its CRC-32 is wrong")
        if len(loaded.images) != header["images"]:
            raise ValueError(f"it holds {len(loaded.images)} rows, its header says {header['images']}")
        return loaded, int(header["journal"])

    def _journals(self) -> list[int]:
        prefix = JOURNAL + "."
        return sorted(int(name[len(prefix):]) for name in os.listdir(self.folder)
                      if name.startswith(prefix) and name[len(prefix):].isdigit())

    def _replay(self, number: int, loaded: Loaded) -> int:
        """Apply one journal's lines; a last line cut short (a crash while appending: its verb was not
        answered) is left out. The lines applied."""
        with open(os.path.join(self.folder, f"{JOURNAL}.{number}"), "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        if lines[-1]:
            log.warning("Journal %d of repository %s ends in a line cut short: left out", number, self.uuid)
        for line in lines[:-1]:
            change = json.loads(line)
            if "put" in change:
                image = from_row(change["put"])
                loaded.images[image.id] = image
            elif "gone" in change:
                loaded.images.pop(change["gone"], None)
            elif "bad" in change:
                image_id, reason = change["bad"]
                loaded.unreadable[image_id] = str(reason)
            else:
                loaded.unreadable.pop(change["fine"], None)
        return len(lines) - 1

    # -- writing --------------------------------------------------------

    # The index's changes, each as the index makes it (hsm.storage.repository.IdIndex): an image set or
    # gone, a record found unreadable or no longer so.

    def put(self, image: Image) -> None:
        self._append({"put": to_row(image)})

    def gone(self, image_id: str) -> None:
        self._append({"gone": image_id})

    def bad(self, image_id: str, reason: str) -> None:
        self._append({"bad": [image_id, reason]})

    def fine(self, image_id: str) -> None:
        self._append({"fine": image_id})

    def _append(self, change: dict) -> None:
        """One line at the journal's end, in one write (no fsync: a crash of hsmd leaves it in the page
        cache; a restart of the machine discards the snapshot, see the module's docstring)."""
        line = json.dumps(change, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._journal is None:
                os.makedirs(self.folder, mode=0o700, exist_ok=True)
                self._journal = os.open(os.path.join(self.folder, f"{JOURNAL}.{self._number}"),
                                        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.write(self._journal, line)
            self.lines += 1

    def due(self, images: int) -> bool:
        """Whether the journal has grown enough for a new snapshot."""
        return self.lines >= max(COMPACT_AFTER, images // 4)

    def begin(self) -> int:
        """Start the next journal, for the changes after a snapshot about to be taken (call it under the
        index lock, with the rows): its number, which that snapshot's replay starts from."""
        with self._lock:
            self._close_journal()
            self._number += 1
            self.lines = 0
            return self._number

    def write(self, rows: list[list], unreadable: dict[str, str], first: int) -> None:
        """Write a snapshot of `rows` (taken under the index lock right after begin() answered `first`),
        then remove the journals it holds."""
        body = b"".join(json.dumps(rows[i:i + ROWS_PER_LINE], separators=(",", ":")).encode() + b"\n"
                        for i in range(0, len(rows), ROWS_PER_LINE))
        header = {"version": VERSION, "uuid": self.uuid, "boot": boot_id(),
                  "journal": first, "images": len(rows), "unreadable": unreadable, "crc": zlib.crc32(body)}
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        atomic_write(os.path.join(self.folder, SNAPSHOT), json.dumps(header).encode() + b"\n" + body, mode=0o600)
        for number in self._journals():
            if number < first:
                os.unlink(os.path.join(self.folder, f"{JOURNAL}.{number}"))
        log.info("Index snapshot of repository %s written: %d images", self.uuid, len(rows))

    def discard(self) -> None:
        """Remove the snapshot and every journal (they cannot be used); numbering starts again."""
        with self._lock:
            self._close_journal()
            self._number, self.lines = 0, 0
            try:
                names = os.listdir(self.folder)
            except FileNotFoundError:
                return
            for name in names:
                if name == SNAPSHOT or name.startswith(JOURNAL + "."):
                    try:
                        os.unlink(os.path.join(self.folder, name))
                    except OSError as e:
                        log.warning("Cannot remove %s of the index snapshot of %s: %s", name, self.uuid, e)

    def _close_journal(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None

    def close(self) -> None:
        with self._lock:
            self._close_journal()


def release_memory() -> None:
    """Give the C heap's free memory back to the system (glibc's malloc_trim): a start from a snapshot of
    100,000 images leaves 30 MB of it free, which the process would otherwise keep."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its heap is its own business
        pass


def chunks(names: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(names), size):
        yield names[i:i + size]
