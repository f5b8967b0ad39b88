"""VDSM's volumes on hsm's images.

VDSM names an image (imgUUID) and the volumes of its chain (volUUID each,
chosen by the caller); hsm has disks and snapshots. One mapping serves every
volume verb:

- a VDSM image is the hsm image with the same id: a disk, whose top volume
  is the image's leaf (LEAF), or a snapshot that VDSM made as a template
  (copyImage with volType SHARED), whose one volume is SHARED;
- a volume of the image below its leaf (INTERNAL) is the snapshot that
  createVolume made of the image, named by that volume's id and owning it.
  It is no VDSM image: getImagesList leaves it out.

What VDSM keeps per volume and hsm does not (description, legality, disk
type, allocation) is in the owning image's userData under "vdsm", and moves
with the volume. Records come from storage other hosts write: whatever that
entry holds is checked before use, and an image hsm's own API made reads as
a volume with VDSM's defaults.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from hsm.errors import (
    CannotDeleteSharedVolume,
    CannotDeleteVolume,
    CopyImageError,
    ImageDoesNotExistInSD,
    ImageIsNotLegalChain,
    InvalidParameterException,
    MiscFileReadException,
    PrepareIllegalVolumeError,
    VolumeDoesNotExist,
    VolumeImageHasChildren,
    VolumeIsBusy,
)
from hsm.ids import is_uuid
from hsm.storage import qemuimg
from hsm.storage.domains import BLANK_UUID, check_uuid, number
from hsm.storage.engine import Engine
from hsm.storage.image import DISK, SNAPSHOT, Image, Volume
from hsm.storage.options import ImageOptions
from hsm.storage.repository import FileRepository

# VDSM's constants (its volume module).
UNKNOWN_FORMAT, COW, RAW = 3, 4, 5
FORMATS = {COW: "qcow2", RAW: "raw"}
FORMAT_NAMES = {"qcow2": "COW", "raw": "RAW"}
UNKNOWN_ALLOCATION, PREALLOCATED, SPARSE = 0, 1, 2
ALLOCATIONS = {PREALLOCATED: "PREALLOCATED", SPARSE: "SPARSE"}
SHARED, INTERNAL, LEAF = 6, 7, 8
LEGALITIES = ("LEGAL", "ILLEGAL", "FAKE")
MAX_DESCRIPTION = 210  # bytes VDSM kept for a volume's description
SECTOR = 512
KEY = "vdsm"           # the userData entry


@dataclass
class VolumeMeta:
    """What VDSM keeps per volume that an hsm image does not say by itself."""
    image: str                # the VDSM image the volume belongs to
    description: str = ""
    legality: str = "LEGAL"
    disktype: str = ""
    allocation: str = "SPARSE"

    @classmethod
    def of(cls, image: Image) -> VolumeMeta:
        """The entry in the image's userData; what is missing or damaged reads as VDSM's defaults."""
        raw = image.userData.get(KEY)
        raw = raw if isinstance(raw, dict) else {}
        owner = raw.get("image")
        meta = cls(owner if isinstance(owner, str) and is_uuid(owner) else image.id)
        for name, allowed in (("description", None), ("legality", LEGALITIES), ("disktype", None),
                              ("allocation", tuple(ALLOCATIONS.values()))):
            value = raw.get(name)
            if isinstance(value, str) and len(value) <= MAX_DESCRIPTION and (allowed is None or value in allowed):
                setattr(meta, name, value)
        return meta

    def user_data(self, image: Image | None = None) -> dict:
        """`image`'s userData (or a new image's) with this entry in it."""
        kept = dict(image.userData) if image is not None else {}
        kept[KEY] = {"image": self.image, "description": self.description, "legality": self.legality,
                     "disktype": self.disktype, "allocation": self.allocation}
        return kept


def is_vdsm_image(image: Image) -> bool:
    """Whether VDSM sees this image as an image (a disk, or a snapshot that is no image's INTERNAL volume)."""
    return image.kind == DISK or VolumeMeta.of(image).image == image.id


def volume_type(image: Image) -> str:
    """LEAF, INTERNAL or SHARED: the VDSM type of the volume `image` owns on top."""
    if image.kind == DISK:
        return "LEAF"
    return "SHARED" if VolumeMeta.of(image).image == image.id else "INTERNAL"


def size_in_bytes(value: object) -> int:
    """createVolume's size as VDSM took it: an integer counts 512-byte sectors, a string bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value * SECTOR
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    raise InvalidParameterException(f"size={value!r}: sectors as an integer, or bytes as a string of digits")


def check_url(value: object) -> str:
    """An http or https URL with a host: the only sources uploadVolume reads."""
    if not isinstance(value, str) or len(value) > 2048 or any(c.isspace() for c in value):
        raise InvalidParameterException("srcPath: an http:// or https:// URL")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameterException(f"srcPath={value[:200]!r}: an http:// or https:// URL (rsync and paths "
                                        "are not read here)")
    return value


def check_description(value: object) -> str:
    if not isinstance(value, str) or len(value.encode()) > MAX_DESCRIPTION:
        raise InvalidParameterException(f"description: a string of at most {MAX_DESCRIPTION} bytes")
    return value


def choice(name: str, value: object, allowed: dict[int, str] | tuple[int, ...], default: int | None = None) -> int:
    picked = number(name, value, default)
    if picked not in allowed:
        raise InvalidParameterException(f"{name}={value!r}: expected one of {sorted(allowed)}")
    return picked


def _sizes(stat: dict | None) -> tuple[str, str]:
    """(apparentsize, truesize) of a volume file's stat, as VDSM's strings; ("0", "0") when it is missing."""
    return (str(stat["size"]), str(stat["blocks"] * 512)) if stat else ("0", "0")


def follow_up(opts: ImageOptions, count: int) -> ImageOptions:
    """Options for the `count`th more removal one VDSM verb makes: its task is named after the verb's
    (`<taskId>_<count>`), so that in transparent mode too every task has an id the caller can trace."""
    return opts if count == 0 else ImageOptions(taskId=f"{opts.taskId}_{count}" if opts.taskId else None)


@dataclass
class Located:
    """A volume of a VDSM image: the chain's image, the image owning the volume, the volume itself."""
    repo: FileRepository
    chain: Image
    owner: Image
    volume: Volume

    @property
    def index(self) -> int:
        return next(i for i, vol in enumerate(self.chain.volumes) if vol.id == self.volume.id)

    @property
    def parent(self) -> str:
        below = self.index + 1
        return self.chain.volumes[below].id if below < len(self.chain.volumes) else BLANK_UUID


class Volumes:
    """VDSM's volume verbs, each one or two engine calls on the mapping above."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- finding ---------------------------------------------------------

    def image(self, repo: FileRepository, img_uuid: object) -> Image:
        """The VDSM image `img_uuid` of the domain: 268 when there is none (an INTERNAL volume is none)."""
        image = repo.get(check_uuid("imgUUID", img_uuid))
        if not is_vdsm_image(image):
            raise ImageDoesNotExistInSD(f"{img_uuid} is a volume of image {VolumeMeta.of(image).image}")
        return image

    def locate(self, repo: FileRepository, img_uuid: object, vol_uuid: object) -> Located:
        chain = self.image(repo, img_uuid)
        vol_uuid = check_uuid("volUUID", vol_uuid)
        for vol in chain.volumes:
            if vol.id == vol_uuid:
                owner = chain if vol.image == chain.id else repo.get(vol.image)
                return Located(repo, chain, owner, vol)
        raise VolumeDoesNotExist(f"{vol_uuid} in image {chain.id}")

    def volume_ids(self, repo: FileRepository, img_uuid: str) -> list[str]:
        """The volumes of one image, leaf first; blank: every volume of the domain."""
        if img_uuid in ("", BLANK_UUID):
            return sorted({vol.id for image in list(repo.images.values()) if not image.removed
                           for vol in image.own})
        return [vol.id for vol in self.image(repo, img_uuid).volumes]

    # -- creating ----------------------------------------------------------

    def create(self, repo: FileRepository, img_uuid: object, size: object, vol_format: object,
               preallocate: object, disk_type: object, vol_uuid: object, description: object,
               src_img: object, src_vol: object, opts: ImageOptions) -> tuple[str, bool]:
        """createVolume: (the id of the task doing it, whether the image existed as asked already)."""
        img_uuid = check_uuid("imgUUID", img_uuid)
        vol_uuid = check_uuid("volUUID", vol_uuid)
        nbytes = size_in_bytes(size)
        fmt = FORMATS[choice("volFormat", vol_format, FORMATS)]
        allocation = ALLOCATIONS[choice("preallocate", preallocate, ALLOCATIONS)]
        if isinstance(disk_type, int) and not isinstance(disk_type, bool):
            disk_type = str(disk_type)  # vdsClient sends a number (2 for a data disk), the engine a string
        if not isinstance(disk_type, str) or len(disk_type) > 32:
            raise InvalidParameterException(f"diskType={disk_type!r}: expected a short string or a number")
        meta = VolumeMeta(img_uuid, check_description(description), "LEGAL", disk_type, allocation)
        src_img = check_uuid("srcImgUUID", src_img or BLANK_UUID, blank=True)
        src_vol = check_uuid("srcVolUUID", src_vol or BLANK_UUID, blank=True)
        opts.imageId = img_uuid
        if src_vol == BLANK_UUID:
            return self._new_image(repo, nbytes, meta, Volume(vol_uuid, img_uuid, fmt),
                                   allocation == "PREALLOCATED", None, opts)
        if fmt != "qcow2" or allocation == "PREALLOCATED":
            raise InvalidParameterException("a volume over a parent is COW and SPARSE (volFormat 4, preallocate 2)")
        source = self.locate(repo, src_img if src_img != BLANK_UUID else img_uuid, src_vol)
        if source.chain.id == img_uuid:
            return self._snapshot(source, nbytes, meta, vol_uuid, opts)
        if source.owner.kind != SNAPSHOT:
            raise ImageIsNotLegalChain(f"{src_vol} is the leaf of image {src_img}: only a template or an INTERNAL "
                                       "volume can be the parent of another image's volume")
        return self._new_image(repo, nbytes, meta, Volume(vol_uuid, img_uuid, fmt), False, source.owner.id, opts)

    def _new_image(self, repo: FileRepository, nbytes: int, meta: VolumeMeta, top: Volume, preallocate: bool,
                   base: str | None, opts: ImageOptions) -> tuple[str, bool]:
        known = repo.images.get(top.image)
        existed = known is not None and not known.removed
        self._engine.create_disk(repo.id, str(nbytes), base, meta.user_data(), opts, top=top,
                                 preallocate=preallocate)
        return opts.taskId or "", existed

    def _snapshot(self, source: Located, nbytes: int, meta: VolumeMeta, vol_uuid: str,
                  opts: ImageOptions) -> tuple[str, bool]:
        """A new leaf over the image's leaf: the old leaf becomes a snapshot named by its volume id."""
        disk, repo = source.chain, source.repo
        if disk.top.id == vol_uuid and source.owner.id == source.volume.id:
            return opts.taskId or "", True  # asked again after it was made
        if disk.kind != DISK or source.volume.id != disk.top.id:
            raise ImageIsNotLegalChain(f"{source.volume.id} is not the leaf of image {disk.id}")
        if nbytes != disk.size:
            raise InvalidParameterException(f"size: {nbytes} bytes, the image's leaf has {disk.size}")
        old = VolumeMeta.of(disk)
        opts.imageId = source.volume.id
        self._engine.create_snapshot(repo.id, disk.id, old.user_data(), opts, new_top=vol_uuid)
        self._engine.set_user_data(repo.id, disk.id, meta.user_data(repo.get(disk.id)))
        return opts.taskId or "", False

    def copy(self, repo: FileRepository, src: Located, target: FileRepository, dst_img: object, dst_vol: object,
             description: object, vol_type: object, vol_format: object, preallocate: object,
             opts: ImageOptions) -> bool:
        """copyImage: the chain up to `src`'s volume collapsed into image dst_img's one volume dst_vol;
        volType SHARED makes it a template (an hsm snapshot), LEAF a disk. Whether that copy was there
        already (asked again: nothing started)."""
        dst_img = check_uuid("dstImgUUID", dst_img)
        dst_vol = check_uuid("dstVolUUID", dst_vol)
        kind = SNAPSHOT if choice("volType", vol_type, (SHARED, LEAF), SHARED) == SHARED else DISK
        picked = choice("volFormat", vol_format, (0, UNKNOWN_FORMAT, COW, RAW), UNKNOWN_FORMAT)
        fmt = FORMATS.get(picked, src.volume.format)  # 0 (vdsClient's default) or 3: the source's format
        if choice("preallocate", preallocate, (UNKNOWN_ALLOCATION, PREALLOCATED, SPARSE), 0) == PREALLOCATED:
            raise InvalidParameterException("preallocate=1: copies are made sparse here")
        meta = VolumeMeta(dst_img, check_description(description), "LEGAL", VolumeMeta.of(src.owner).disktype)
        opts.imageId, opts.imageHints = dst_img, {src.owner.id: repo.id}
        known = target.images.get(dst_img)
        self._engine.copy(target.id, src.owner.id, None, meta.user_data(), opts, top=Volume(dst_vol, dst_img, fmt),
                          kind=kind)
        return known is not None and not known.removed

    # -- removing -----------------------------------------------------------

    def delete_image(self, repo: FileRepository, img_uuid: object, opts: ImageOptions) -> None:
        """deleteImage: the image, then its INTERNAL volumes no other image reads (a template in use: 223)."""
        image = self.image(repo, img_uuid)
        if image.kind == SNAPSHOT:
            users = [other.id for other in repo.dependents(image) if not other.removed]
            if users:
                raise CannotDeleteSharedVolume(f"template {image.id} is the base of image {users[0]}")
        internal = [repo.get(vol.image) for vol in image.volumes
                    if vol.image != image.id and VolumeMeta.of(repo.get(vol.image)).image == image.id]
        self._engine.remove(repo.id, image.id, opts)
        for count, snapshot in enumerate(internal, 1):
            if not any(not other.removed for other in repo.dependents(snapshot)):
                self._engine.remove(repo.id, snapshot.id, follow_up(opts, count))

    def delete_volumes(self, repo: FileRepository, img_uuid: object, volumes: object, opts: ImageOptions) -> None:
        """deleteVolume: the image's leaf (with all its volumes) is deleteImage; a volume below the leaf
        has a child (204), and a leaf alone over INTERNAL volumes cannot go (snapshots here never
        become writable again: mergeSnapshots folds them instead)."""
        if not isinstance(volumes, list) or not volumes:
            raise InvalidParameterException("volumes: expected a list of volume UUIDs")
        image = self.image(repo, img_uuid)
        asked = {self.locate(repo, image.id, vol).volume.id for vol in volumes}
        own = [vol.id for vol in image.volumes if repo.get(vol.image).kind == DISK or vol.image == image.id
               or VolumeMeta.of(repo.get(vol.image)).image == image.id]
        below = sorted(asked - {image.top.id})
        if below and not set(own) <= asked:
            raise VolumeImageHasChildren(f"{below[0]} has a child volume in image {image.id}")
        if not set(own) <= asked:
            raise CannotDeleteVolume(f"{image.top.id} is the leaf over INTERNAL volumes: snapshots stay read-only "
                                     "here; delete the image, or merge instead")
        self.delete_image(repo, image.id, opts)

    def merge(self, repo: FileRepository, img_uuid: object, ancestor: object, successor: object,
              opts: ImageOptions) -> None:
        """mergeSnapshots: the volumes from `ancestor` up to below `successor` are folded into it."""
        image = self.image(repo, img_uuid)
        top = self.locate(repo, image.id, successor)
        bottom = self.locate(repo, image.id, ancestor)
        if bottom.index <= top.index:
            raise InvalidParameterException(f"ancestor {bottom.volume.id} is not below successor {top.volume.id}")
        folded = image.volumes[top.index + 1:bottom.index + 1]
        owners = [repo.get(vol.image) for vol in folded]
        if any(volume_type(owner) != "INTERNAL" for owner in owners):
            raise CannotDeleteSharedVolume(f"{bottom.volume.id}..{top.volume.id} takes in a template's volume")
        for count, owner in enumerate(owners):
            self._engine.remove(repo.id, owner.id, follow_up(opts, count))

    # -- describing ----------------------------------------------------------

    def info(self, found: Located) -> dict:
        """getVolumeInfo's answer, with VDSM's keys and sizes in bytes as strings. `pool` is empty, as in
        the volume metadata of VDSM's version 3 domains (a domain is not tied to a pool)."""
        owner, meta = found.owner, VolumeMeta.of(found.owner)
        usable = owner.usable() and found.chain.usable()
        legality = meta.legality if usable else "ILLEGAL"
        stat = self._stat(found)  # one stat for the sizes and the time
        apparent, true = _sizes(stat)
        return {"uuid": found.volume.id, "format": FORMAT_NAMES[found.volume.format],
                "type": meta.allocation, "voltype": volume_type(owner), "disktype": meta.disktype,
                "capacity": str(owner.size), "truesize": true, "apparentsize": apparent,
                "parent": found.parent, "legality": legality, "status": "OK" if legality == "LEGAL" else "ILLEGAL",
                "ctime": str(int(owner.created)), "mtime": str(int(stat["mtime"])) if stat else "0",
                "domain": found.repo.uuid, "image": meta.image if owner.kind == SNAPSHOT else found.chain.id,
                "description": meta.description, "pool": ""}

    def sizes(self, found: Located) -> tuple[str, str]:
        """(apparentsize, truesize) in bytes, as strings: the file's length and what it holds on disk."""
        return _sizes(self._stat(found))

    def _stat(self, found: Located) -> dict | None:
        try:
            return found.repo.io.stat(found.repo.volume_path(found.volume))
        except FileNotFoundError:
            return None

    def relabel(self, found: Located, description: str | None = None, legality: str | None = None) -> None:
        meta = VolumeMeta.of(found.owner)
        if description is not None:
            meta.description = check_description(description)
        if legality is not None:
            if legality not in LEGALITIES:
                raise InvalidParameterException(f"legality={legality!r}: expected one of {', '.join(LEGALITIES)}")
            meta.legality = legality
        self._engine.set_user_data(found.repo.id, found.owner.id, meta.user_data(found.owner))

    def upload(self, found: Located, url: object) -> None:
        """uploadVolume: the volume's content replaced by the image at `url`, read by qemu-img's own http(s)
        driver. Only the one volume of a standalone image, not in use; only http and https (a path or
        another scheme would let a caller read files hsmd can read); the source must be in the volume's
        format, no larger, and read through no backing file. The volume is ILLEGAL until it is done."""
        url = check_url(url)
        repo, image = found.repo, found.chain
        if len(image.volumes) != 1 or image.kind != DISK:
            raise InvalidParameterException(f"image {image.id}: only the one volume of a standalone image")
        if self._engine.is_prepared(repo, image.id) or self._engine.image_tasks(repo, image):
            raise VolumeIsBusy(f"{image.id} is in use")
        try:
            report = qemuimg.info(url)
        except qemuimg.QemuImgError as e:
            raise MiscFileReadException(f"{url}: {e}") from None
        assert isinstance(report, dict)
        fmt = FORMATS.get({"qcow2": COW, "raw": RAW}.get(report.get("format", ""), 0), "")
        if fmt != found.volume.format:
            raise InvalidParameterException(f"{url} is {report.get('format')!r}, the volume {found.volume.format}")
        if report.get("backing-filename") or int(report.get("virtual-size", 0)) > image.size:
            raise InvalidParameterException(f"{url}: reads through a backing file, or is larger than {image.size}")
        self.relabel(found, legality="ILLEGAL")
        try:
            qemuimg.convert(url, repo.volume_path(found.volume), source_format=fmt, target_format=fmt, existing=True)
        except qemuimg.QemuImgError as e:
            raise CopyImageError(f"{url}: {e}; volume {found.volume.id} stays ILLEGAL") from None
        self.relabel(self.locate(repo, image.id, found.volume.id), legality="LEGAL")

    def check_legal(self, repo: FileRepository, image: Image) -> None:
        """A chain with an ILLEGAL volume is not prepared, as VDSM refused it (227)."""
        for vol in image.volumes:
            owner = image if vol.image == image.id else repo.get(vol.image)
            if VolumeMeta.of(owner).legality == "ILLEGAL":
                raise PrepareIllegalVolumeError(f"volume {vol.id} of image {image.id} is ILLEGAL")
