"""What the image verbs accept: ids that are safe file names, sizes, and `options`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from hsm.errors import InvalidParameterException
from hsm.ids import is_id
from hsm.sizes import parse_size
from hsm.storage.image import KINDS

STRATEGIES = ("space", "performance")
MAX_PAGE = 10000  # options.limit: the most ids (or check entries) one paged answer carries


def check_id(name: str, value: object) -> str:
    """Ids become file names: letters, digits, '-' and '_' only, so never '/' or '..'."""
    if not isinstance(value, str) or not is_id(value):
        raise InvalidParameterException(f"{name}={value!r}: letters, digits, '-' and '_' only (at most 128)")
    return value


@dataclass
class ImageOptions:
    autoFix: bool = True
    strategy: str = "space"
    participatingRepositories: list[str] = field(default_factory=list)
    imageHints: dict[str, str] = field(default_factory=dict)
    offload: bool = True
    taskId: str | None = None
    imageId: str | None = None
    force: bool = False
    kind: str | None = None
    limit: int | None = None   # with marker: a page of the answer, in id order (getImageList, checkStorageRepository)
    marker: str | None = None  # the last id of the previous page, its answer's `next`

    @property
    def paged(self) -> bool:
        return self.limit is not None or self.marker is not None

    @classmethod
    def parse(cls, options: dict) -> ImageOptions:
        known = set(cls.__dataclass_fields__) | {"requestId"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidParameterException(f"options: unknown {', '.join(unknown)}")
        opts = cls(**{k: v for k, v in options.items() if k != "requestId"})
        for name in ("autoFix", "offload", "force"):
            if not isinstance(getattr(opts, name), bool):
                raise InvalidParameterException(f"options.{name}={getattr(opts, name)!r}: expected a boolean")
        if opts.strategy not in STRATEGIES:
            raise InvalidParameterException(f"options.strategy={opts.strategy!r}: expected space or performance")
        if not isinstance(opts.participatingRepositories, list):
            raise InvalidParameterException("options.participatingRepositories: expected a list of repository ids")
        if not isinstance(opts.imageHints, dict):
            raise InvalidParameterException("options.imageHints: expected a struct {imageId: repoId}")
        if opts.imageId is not None:
            check_id("options.imageId", opts.imageId)
        if opts.taskId is not None:
            check_id("options.taskId", opts.taskId)
        if opts.kind is not None and opts.kind not in KINDS:
            raise InvalidParameterException(f"options.kind={opts.kind!r}: expected disk or snapshot")
        if opts.limit is not None and (not isinstance(opts.limit, int) or isinstance(opts.limit, bool)
                                       or not 1 <= opts.limit <= MAX_PAGE):
            raise InvalidParameterException(f"options.limit={opts.limit!r}: expected an integer from 1 to {MAX_PAGE}")
        if opts.marker == "":
            opts.marker = None  # the first page: what `next` says when there is no more
        if opts.marker is not None:
            check_id("options.marker", opts.marker)
        return opts

    def page(self, ids: Iterator[str]) -> tuple[list[str], str]:
        """The first `limit` of `ids` (in id order), and the marker of the next page: "" when none is left."""
        taken = list(itertools.islice(ids, self.limit or MAX_PAGE))
        more = taken and next(ids, None) is not None
        return taken, taken[-1] if more else ""


# Measured: qemu-img 7.2 create -f qcow2 (64 KiB clusters, backing file or not) makes 2**51, refuses 2**51 + 512.
MAX_IMAGE_SIZE = 2**51


def parse_image_size(value: object) -> int:
    """An image size from the wire: a positive multiple of 512 bytes, at most MAX_IMAGE_SIZE (2 PiB)."""
    size = parse_size("size", value)
    if size <= 0 or size % 512:
        raise InvalidParameterException(f"size={size}: must be a positive multiple of 512 bytes")
    if size > MAX_IMAGE_SIZE:
        raise InvalidParameterException(
            f"size={size}: larger than {MAX_IMAGE_SIZE} bytes (2 PiB), the most qemu-img makes in a qcow2 image")
    return size
