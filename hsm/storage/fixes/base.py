"""What every kind of fix is: its steps, the locks it takes, and what check says of it.

A kind of fix is one class in its own module of this package, registered in
hsm.storage.fixes.KINDS: a new operation is a new module, not a new branch in
every function. Each step reads what to do from the image record, so it can
run again after a crash of this or any other host, and first looks whether
its work is already done (every step is idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from hsm.errors import HsmError, VolumeCreationError
from hsm.storage.image import Image
from hsm.storage.repository import FileRepository
from hsm.tasks import EXCLUSIVE, SHARED, StepContext
from hsm.tasks.resources import IMAGE, REPOSITORY

if TYPE_CHECKING:
    from hsm.storage.fixes.manager import Fixes

# A step: (its context, the repository, the image it works on: an Image, or None for a fix on no image).
StepFunc = Callable[[StepContext, FileRepository, Any], None]


class Fix:
    name: ClassVar[str]             # the task kind is "fix.<name>"; an intent's op names the fix that completes it
    fix_type: ClassVar[str]         # what checkStorageRepository calls it: mend, optimize, clean or merge
    description: ClassVar[str]      # what check says it does
    data_error: ClassVar[type[HsmError]] = VolumeCreationError  # what a failed qemu-img or file call answers

    def __init__(self, fixes: Fixes) -> None:
        self.fixes = fixes
        self.engine = fixes.engine

    def plan(self, args: dict) -> list[tuple[str, StepFunc]]:
        """The steps, named, for a task with these arguments."""
        raise NotImplementedError

    def extra_args(self, repo: FileRepository, image: Image) -> dict:
        """What the task's arguments carry besides the repository and image (the images it also locks)."""
        return {}

    def resources(self, args: dict) -> list[tuple[str, str, str]]:
        """The locks: its repository shared, its image and any other image it changes exclusive, a source shared."""
        repo_uuid = args["repo"]
        wanted = [(REPOSITORY, repo_uuid, SHARED), (IMAGE, f"{repo_uuid}/{args['image']}", EXCLUSIVE)]
        if args.get("disk"):
            wanted.append((IMAGE, f"{repo_uuid}/{args['disk']}", EXCLUSIVE))
        if args.get("sourceRepo"):
            wanted += [(REPOSITORY, args["sourceRepo"], SHARED),
                       (IMAGE, f"{args['sourceRepo']}/{args['source']}", SHARED)]
        return wanted

    def missing_input(self, repo: FileRepository, image: Image) -> str:
        """Why this fix cannot run at all for the image (what it reads is gone), or ''."""
        return ""


def backing_name(image: Image, index: int) -> str | None:
    """The backing file name of the volume at `index` (relative: volumes share one folder)."""
    return image.volumes[index + 1].filename if index + 1 < len(image.volumes) else None


def backing_format(image: Image, index: int) -> str:
    """The format of the volume below the one at `index` (a raw volume can only be a chain's last)."""
    return image.volumes[index + 1].format if index + 1 < len(image.volumes) else "qcow2"
