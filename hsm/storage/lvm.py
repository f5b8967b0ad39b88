"""hsmd's side of LVM: one volume group's commands through supervdsmd, and a sampled cache of its LVs.

Every command runs as supervdsmd's `lvm` verb with one --config string: a
device filter that accepts exactly the repository's PVs and rejects all
others, plus VDSM's scanning, locking and backup settings. Reports are read as
JSON. LVM's failures come back as VDSM's error numbers (506 no such VG, 610 no
such LV, ...); every name, tag and size is checked here before it is sent.

The VG's LVs are kept in a cache that every change made here invalidates (and
`invalidate()` for changes seen elsewhere, such as udev events). A refresh runs
one `lvs`, however many threads ask for it at once. `volume_groups()` reads
every VG on a set of devices (a host's, for VDSM's getVGList) in one `vgs`.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hsm import errors
from hsm.sampling import SamplingMethod
from supervdsm.client import SupervdsmClient
from supervdsm.lvm import check_name

log = logging.getLogger("hsm.storage.lvm")

MiB = 1 << 20
EXTENT_SIZE = 128 * MiB    # VDSM's extent size for block storage domains
METADATA_SIZE = 128 * MiB  # VDSM's metadata area: two per PV, used on the first PV only

_TAG = re.compile(r"[A-Za-z0-9_+.=:/][A-Za-z0-9_+.=:/-]{0,1023}")
_DEVICE = re.compile(r"/dev/[A-Za-z0-9_.:/+-]+")
_SEGMENT_DEVICE = re.compile(r"(.+)\(([0-9]+)\)")

_REPORT = ["--reportformat", "json", "--units", "b", "--nosuffix"]
_NO_BACKUP = ["--autobackup", "n"]  # as VDSM: no metadata backup file per LV change
_LV_FIELDS = "lv_uuid,lv_name,lv_size,lv_tags,lv_attr,seg_start_pe,seg_size_pe,devices"
_VG_FIELDS = ("vg_uuid,vg_name,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,vg_tags,vg_mda_size,"
              "pv_count,lv_count,vg_attr")
_PV_FIELDS = "pv_uuid,pv_name,pv_size,pe_start,vg_name,pv_mda_count,pv_mda_used_count"

# What LVM prints on every command of a host without device-mapper.
_NOISE = "WARNING: Activation disabled"

# LVM's words for conditions that have their own number, whatever the command.
_CONDITIONS: list[tuple[re.Pattern, type[errors.HsmError]]] = [
    (re.compile(r'Volume group "[^"]*" not found'), errors.VolumeGroupDoesNotExist),
    (re.compile(r"Failed to find logical volume|not found in volume group"), errors.LogicalVolumeDoesNotExistError),
    (re.compile(r"already exists in volume group"), errors.LogicalVolumeAlreadyExists),
    (re.compile(r"A volume group called \S+ already exists"), errors.VolumeGroupAlreadyExistsError),
    (re.compile(r"insufficient free space", re.I), errors.VolumeGroupSizeError),
]


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise errors.InvalidParameterException(f"tag={tag!r}: letters, digits and _+.=:/- only, up to 1024")
    return tag


def check_device(device: str) -> str:
    if not isinstance(device, str) or not _DEVICE.fullmatch(device) or ".." in device:
        raise errors.InvalidParameterException(f"device={device!r}: expected a /dev path")
    return device


def _check_size(what: str, size: int) -> int:
    if type(size) is not int or size <= 0:
        raise errors.InvalidParameterException(f"{what}={size!r}: expected a positive number of bytes")
    return size


def lvm_config(devices: Iterable[str]) -> str:
    """The --config string of every command: only `devices` are seen, with VDSM's other settings."""
    # "[.]" rather than "\.": supervdsmd's config parser takes no backslashes.
    accept = "|".join("^" + re.sub(r"([.+])", r"[\1]", device) + "$" for device in sorted(set(devices)))
    device_filter = f'["a|{accept}|", "r|.*|"]' if accept else '["r|.*|"]'
    return ('devices { preferred_names=["^/dev/mapper/"] ignore_suspended_devices=1 write_cache_state=0 '
            f'disable_after_error_count=3 filter={device_filter} hints="none" obtain_device_list_from_udev=0 '
            'use_devicesfile=0 } global { prioritise_write_locks=1 wait_for_locks=1 use_lvmpolld=1 } '
            'backup { retain_min=50 retain_days=0 }')


@dataclass(frozen=True)
class Segment:
    lv_start: int   # its first extent in the LV
    extents: int
    pv: str         # the device holding it
    pv_start: int   # its first extent on that device


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    uuid: str
    size: int                   # bytes, a whole number of extents
    tags: tuple[str, ...]
    attr: str                   # lv_attr, e.g. "-wi-a-----"
    segments: tuple[Segment, ...]

    @property
    def writeable(self) -> bool:
        return self.attr[1:2] == "w"

    @property
    def pv(self) -> str:
        """The device of its first segment."""
        return self.segments[0].pv if self.segments else ""


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    uuid: str
    size: int
    free: int
    extent_size: int
    extent_count: int
    free_count: int
    tags: tuple[str, ...]
    mda_size: int
    pv_count: int
    lv_count: int
    attr: str        # vg_attr, e.g. "wz--n-": permission, resizeable, exported, partial, allocation, clustered

    @property
    def partial(self) -> bool:
        """Some of its PVs are missing."""
        return self.attr[3:4] == "p"


@dataclass(frozen=True)
class PhysicalVolume:
    name: str
    uuid: str
    size: int
    pe_start: int   # bytes before its first extent
    vg_name: str    # "" when in no VG
    mda_count: int
    mda_used_count: int


class LVM:
    """One volume group and its devices, driven through supervdsmd's `lvm` verb.

    Thread-safe. `calls()` counts the lvm commands run, by command.
    """

    def __init__(self, supervdsm: SupervdsmClient, vg_name: str, devices: Sequence[str]) -> None:
        self._supervdsm = supervdsm
        self.vg_name = check_name("vgName", vg_name)
        self._devices = tuple(check_device(device) for device in devices)
        self._lock = threading.Lock()
        self._calls: collections.Counter[str] = collections.Counter()
        self._volumes: dict[str, LogicalVolume] | None = None
        self._generation = 0                   # moved on by every invalidate()
        self._extent_size: int | None = None   # never changes for a VG
        self._refresh = SamplingMethod(self._read_volumes)

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    # The LV cache.

    def volumes(self) -> dict[str, LogicalVolume]:
        """The VG's LVs by name: the cache, refreshed first if a change made it stale."""
        with self._lock:
            cached = self._volumes
        return dict(cached if cached is not None else self.refresh())

    def volume(self, name: str) -> LogicalVolume:
        """One LV; a name the cache lacks is looked for once more (another host may have made it): else 610."""
        check_name("lvName", name)
        found = self.volumes().get(name) or self.refresh().get(name)
        if found is None:
            raise errors.LogicalVolumeDoesNotExistError(f"{self.vg_name}/{name}")
        return found

    def refresh(self) -> dict[str, LogicalVolume]:
        """The LVs as an `lvs` that started after this call reads them; concurrent callers share one `lvs`."""
        return self._refresh()

    def invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._volumes = None

    def _read_volumes(self) -> dict[str, LogicalVolume]:
        with self._lock:
            generation = self._generation
        rows = self._report("lvs", "lv", ["-o", _LV_FIELDS, self.vg_name])
        volumes = _volumes(rows)
        with self._lock:
            if self._generation == generation:  # else a change came during the run: it may miss it
                self._volumes = volumes
        return volumes

    # Reports.

    def vg(self) -> VolumeGroup:
        rows = self._report("vgs", "vg", ["-o", _VG_FIELDS, self.vg_name])
        if not rows:
            raise errors.VolumeGroupDoesNotExist(self.vg_name)
        vg = _vg(rows[0])
        with self._lock:
            self._extent_size = vg.extent_size
        return vg

    def pvs(self) -> list[PhysicalVolume]:
        """The PVs among this VG's devices, in a VG or not."""
        return [_pv(row) for row in self._report("pvs", "pv", ["-o", _PV_FIELDS])]

    def extent_map(self, name: str) -> list[tuple[str, int, int]]:
        """(device, offset, length) in bytes of each segment of an LV, in LV order: where its data lies."""
        volume = self.volume(name)
        extent_size = self.extent_size()
        pe_start = {pv.name: pv.pe_start for pv in self.pvs()}
        return [(seg.pv, pe_start[seg.pv] + seg.pv_start * extent_size, seg.extents * extent_size)
                for seg in volume.segments]

    def extent_size(self) -> int:
        with self._lock:
            known = self._extent_size
        return known if known is not None else self.vg().extent_size

    # Changes of the VG.

    def create_vg(self, tags: Iterable[str] = (), extent_size: int = EXTENT_SIZE,
                  metadata_size: int = METADATA_SIZE) -> VolumeGroup:
        """pvcreate the devices and vgcreate the VG on them with `tags`.

        A device that already belongs to a VG is refused (601) before anything
        is written. After a failure the devices are as they were found.
        """
        tags = [check_tag(tag) for tag in tags]
        if _check_size("extentSize", extent_size) % MiB or extent_size & (extent_size - 1):
            raise errors.InvalidParameterException(f"extentSize={extent_size}: a power of two MiB")
        if _check_size("metadataSize", metadata_size) % MiB:
            raise errors.InvalidParameterException(f"metadataSize={metadata_size}: a whole number of MiB")
        made = self._create_pvs(self._devices, metadata_size, creating=True)
        args = ["--setautoactivation", "n", "--physicalextentsize", f"{extent_size // MiB}m",
                *_tag_options("--addtag", tags), self.vg_name, *self._devices]
        try:
            self._change("vgcreate", args, errors.VolumeGroupCreateError)
        except errors.HsmError:
            self._remove_pvs(made)
            raise
        return self.vg()

    def extend_vg(self, devices: Sequence[str]) -> VolumeGroup:
        """Add devices to the VG (and to the filter); a device in any VG is refused (601), nothing left half-made."""
        new = [check_device(device) for device in devices if device not in self._devices]
        if not new:
            return self.vg()
        mda_size = self.vg().mda_size
        made = self._create_pvs(new, mda_size, creating=False)
        both = (*self._devices, *new)
        try:
            self._change("vgextend", [*_NO_BACKUP, self.vg_name, *new], errors.VolumeGroupExtendError, both)
        except errors.HsmError:
            self._remove_pvs(made)
            raise
        with self._lock:
            self._devices = both
        return self.vg()

    def change_vg_tags(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        args = [*_tag_options("--deltag", remove), *_tag_options("--addtag", add)]
        self._change("vgchange", [*_NO_BACKUP, *args, self.vg_name], errors.VolumeGroupReplaceTagError)

    def remove_vg(self) -> None:
        """vgremove the VG (its LVs with it) and wipe the PV labels of its devices."""
        self._change("vgremove", ["-f", self.vg_name], errors.VolumeGroupRemoveError)
        self._remove_pvs(list(self._devices))

    def _create_pvs(self, devices: Sequence[str], metadata_size: int, creating: bool) -> list[str]:
        """pvcreate `devices` as VDSM does: two metadata areas each, used only on the first PV of a new VG.

        Returns the devices that were not PVs before. A device in a VG is
        refused first (505 if it is this VG, when `creating` it); a failure
        wipes the labels this call wrote.
        """
        found = {row["pv_name"]: row["vg_name"] for row in self._report("pvs", "pv", ["-o", _PV_FIELDS], devices)}
        taken = [f"{device} belongs to volume group {found[device]}" for device in devices if found.get(device)]
        if creating and any(found.get(device) == self.vg_name for device in devices):
            raise errors.VolumeGroupAlreadyExistsError("; ".join(taken))
        if taken:
            raise errors.PhysDevInitializationError("; ".join(taken))
        made = [device for device in devices if device not in found]
        groups = [devices[:1], devices[1:]] if creating else [[], devices]
        try:
            for ignore, group in zip(("n", "y"), groups, strict=True):
                if group:
                    args = ["--metadatasize", f"{metadata_size // MiB}m", "--metadatacopies", "2",
                            "--metadataignore", ignore, *group]
                    self._change("pvcreate", args, errors.PhysDevInitializationError, devices)
        except errors.HsmError:
            self._remove_pvs(made)
            raise
        return made

    def _remove_pvs(self, devices: Sequence[str]) -> None:
        """Wipe PV labels, as a cleanup: a failure is logged, never raised over the error being handled.

        One device at a time: pvremove does nothing at all if one of its devices carries no label.
        """
        for device in devices:
            try:
                self._change("pvremove", ["-y", device], errors.LVMCommandError, [device])
            except errors.HsmError as e:
                log.warning("Could not wipe the PV label of %s: %s", device, e)

    # Changes of LVs.

    def create_lv(self, name: str, size: int, tags: Iterable[str] = (), contiguous: bool = False) -> None:
        """An inactive, unzeroed LV of `size` bytes rounded up to whole extents, with `tags`."""
        check_name("lvName", name)
        _check_size("size", size)
        tag_options = _tag_options("--addtag", tags)
        extents = -(-size // self.extent_size())
        args = [*_NO_BACKUP, "-an", "-Zn", "--wipesignatures", "n", "--contiguous", "y" if contiguous else "n",
                "-l", str(extents), "-n", name, *tag_options, self.vg_name]
        self._change("lvcreate", args, errors.CannotCreateLogicalVolume)

    def extend_lv(self, name: str, size: int, contiguous: bool = False) -> None:
        """Grow an LV to at least `size` bytes (whole extents); nothing to do if it is that big already.
        `contiguous`: only right after its last extent, so an LV of one linear segment stays one (else 560)."""
        extent_size = self.extent_size()
        wanted = -(-_check_size("size", size) // extent_size)
        if self.volume(name).size // extent_size >= wanted:
            return
        try:
            alloc = ["--alloc", "contiguous"] if contiguous else []
            self._change("lvextend", [*_NO_BACKUP, *alloc, "-l", str(wanted), self._lv(name)],
                         errors.LogicalVolumeExtendError)
        except errors.LogicalVolumeExtendError:
            if self.volume(name).size // extent_size < wanted:  # else another caller extended it meanwhile
                raise

    def remove_lvs(self, *names: str) -> None:
        self._change("lvremove", [*_NO_BACKUP, "-f", *(self._lv(name) for name in names)],
                     errors.LogicalVolumeRemoveError)

    def change_lv_tags(self, name: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        args = [*_NO_BACKUP, *_tag_options("--deltag", remove), *_tag_options("--addtag", add), self._lv(name)]
        self._change("lvchange", args, errors.LogicalVolumeReplaceTagError)

    def rename_lv(self, name: str, new_name: str) -> None:
        args = [*_NO_BACKUP, self.vg_name, check_name("lvName", name), check_name("newName", new_name)]
        self._change("lvrename", args, errors.LogicalVolumeRenameError)

    # Running commands.

    def _lv(self, name: str) -> str:
        return f"{self.vg_name}/{check_name('lvName', name)}"

    def _change(self, command: str, args: list[str], failure: type[errors.HsmError],
                devices: Sequence[str] | None = None) -> None:
        """Run a command that changes the VG; the cache is stale after it, whatever its outcome."""
        log.info("lvm %s %s", command, " ".join(args))
        try:
            self._run(command, args, failure, devices)
        finally:
            self.invalidate()

    def _report(self, command: str, key: str, args: list[str], devices: Sequence[str] | None = None) -> list[dict]:
        return _rows(command, key, self._run(command, [*_REPORT, *args], errors.LVMCommandError, devices))

    def _run(self, command: str, args: list[str], failure: type[errors.HsmError],
             devices: Sequence[str] | None = None) -> str:
        with self._lock:
            self._calls[command] += 1
        return _command(self._supervdsm, command, args, failure, self._devices if devices is None else devices)


def volume_groups(supervdsm: SupervdsmClient, devices: Sequence[str]) -> list[VolumeGroup]:
    """Every VG on `devices`, read by one `vgs` whose filter names exactly them: a host's VGs, given its PVs."""
    devices = [check_device(device) for device in devices]
    if not devices:
        return []
    out = _command(supervdsm, "vgs", [*_REPORT, "-o", _VG_FIELDS], errors.LVMCommandError, devices)
    return [_vg(row) for row in _rows("vgs", "vg", out)]


def _command(supervdsm: SupervdsmClient, command: str, args: list[str], failure: type[errors.HsmError],
             devices: Sequence[str]) -> str:
    done = supervdsm.call("lvm", command=command, args=args, config=lvm_config(devices))
    if done["rc"] != 0:
        raise _failure(command, args, done, failure)
    return done["out"]


def _rows(command: str, key: str, out: str) -> list[dict]:
    try:
        return list(json.loads(out)["report"][0][key])
    except (ValueError, KeyError, IndexError, TypeError):
        raise errors.LVMCommandError(f"lvm {command}: unreadable report {out[:200]!r}") from None


def _failure(command: str, args: list[str], done: dict, failure: type[errors.HsmError]) -> errors.HsmError:
    """The error of a failed command: its condition's own number if LVM named one, else the command's."""
    said = "; ".join(line.strip() for line in done["err"].splitlines()
                     if line.strip() and not line.strip().startswith(_NOISE))
    cls = next((cls for pattern, cls in _CONDITIONS if pattern.search(said)), failure)
    return cls(f"lvm {command} {' '.join(args)}: rc={done['rc']}: {said}")


def _tag_options(option: str, tags: Iterable[str]) -> list[str]:
    return [word for tag in tags for word in (option, check_tag(tag))]


def _tags(text: str) -> tuple[str, ...]:
    return tuple(tag for tag in text.split(",") if tag)


def _volumes(rows: list[dict]) -> dict[str, LogicalVolume]:
    """LVs from `lvs` rows, one row per segment."""
    segments: dict[str, list[Segment]] = collections.defaultdict(list)
    first: dict[str, dict] = {}
    for row in rows:
        name = row["lv_name"]
        first.setdefault(name, row)
        match = _SEGMENT_DEVICE.fullmatch(row["devices"].split(",")[0])
        if match:
            segments[name].append(Segment(int(row["seg_start_pe"]), int(row["seg_size_pe"]), match[1],
                                          int(match[2])))
    return {name: LogicalVolume(name, row["lv_uuid"], int(row["lv_size"]), _tags(row["lv_tags"]), row["lv_attr"],
                                tuple(sorted(segments[name], key=lambda seg: seg.lv_start)))
            for name, row in first.items()}


def _vg(row: dict) -> VolumeGroup:
    return VolumeGroup(row["vg_name"], row["vg_uuid"], int(row["vg_size"]), int(row["vg_free"]),
                       int(row["vg_extent_size"]), int(row["vg_extent_count"]), int(row["vg_free_count"]),
                       _tags(row["vg_tags"]), int(row["vg_mda_size"]), int(row["pv_count"]), int(row["lv_count"]),
                       row.get("vg_attr", ""))  # tests/test_lvm.py's scripted reports leave it out


def _pv(row: dict) -> PhysicalVolume:
    return PhysicalVolume(row["pv_name"], row["pv_uuid"], int(row["pv_size"]), int(row["pe_start"]),
                          row["vg_name"], int(row["pv_mda_count"]), int(row["pv_mda_used_count"]))
