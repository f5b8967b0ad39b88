"""hsm-cli's image and repository commands: the everyday work, in words rather than verbs.

    hsm-cli image create 10G                 # a new virtual disk in the 'local' repository
    hsm-cli image snapshot DISK_ID
    hsm-cli image create 10G --base SNAP_ID  # a disk on a snapshot
    hsm-cli image copy IMAGE_ID              # with a progress bar while it copies
    hsm-cli image list | info ID | remove ID
    hsm-cli repo list | check [REPO] | fix [REPO]   # fix runs every fix check found

Mutating commands wait until the image is usable (or broken), showing the
fix's progress; --no-wait returns at once with the image id.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any, TextIO

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)


def parse_size(text: str) -> str:
    """'10G', '512M', '1073741824' as a byte count (a decimal string, as hsmd wants it)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 10G, 512M or 1048576")
    return str(int(match.group(1)) * _UNITS[match.group(2).upper()])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hsm-cli image")
    sub = top.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="a new virtual disk")
    create.add_argument("size", type=parse_size)
    create.add_argument("--base", help="the snapshot the disk starts from")
    create.add_argument("--strategy", choices=["space", "performance"], default="space")
    snapshot = sub.add_parser("snapshot", help="a snapshot of a virtual disk")
    snapshot.add_argument("image")
    copy = sub.add_parser("copy", help="a copy of an image (into --to, default the same repository)")
    copy.add_argument("image")
    copy.add_argument("--to", help="target repository")
    copy.add_argument("--base", help="copy only what differs from this snapshot (already in the target)")
    remove = sub.add_parser("remove")
    remove.add_argument("image")
    sub.add_parser("list")
    info = sub.add_parser("info")
    info.add_argument("image")
    for command in (create, snapshot, copy, remove):
        command.add_argument("--no-wait", action="store_true", help="return once the operation is committed")
    for command in sub.choices.values():
        command.add_argument("--repo", default="local", help="repository id (default: local)")
    return top


def repo_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hsm-cli repo")
    top.add_argument("action", choices=["list", "check", "fix"])
    top.add_argument("repo", nargs="?", default="local")
    return top


def _bar(image: dict, width: int = 30) -> str:
    percent = int(image.get("percentComplete", -1))
    if percent < 0:
        return f"[{'?' * width}]   ? stage {image.get('stage') or '-'} {image.get('state')}"
    filled = width * min(percent, 100) // 100
    return f"[{'#' * filled}{' ' * (width - filled)}] {percent:3d}% stage {image.get('stage') or '-'}"


def wait_image(proxy: Any, repo: str, image_id: str, out: TextIO, interval: float = 0.2) -> dict:
    """Poll until no fix works on the image any more; a progress bar on a terminal."""
    tty = out.isatty()
    while True:
        answer = proxy.getImageStatus(repo, image_id)
        if answer["status"]["code"] != 0:
            return answer
        image = answer["image"]
        if tty:
            out.write("\r" + _bar(image))
            out.flush()
        if not image["tasks"] and (image["state"] != "broken" or image["lastError"]):
            if tty:
                out.write("\n")
            return answer
        time.sleep(interval)


def image_command(argv: list[str], proxy: Any, out: TextIO = sys.stdout) -> dict:
    args = parser().parse_args(argv)
    if args.action == "list":
        return proxy.getImageList(args.repo)
    if args.action == "info":
        return proxy.getImageInfo(args.repo, args.image)
    if args.action == "create":
        options = {"strategy": args.strategy}
        answer = proxy.createVirtualDisk(args.repo, args.size, args.base or "", {}, options)
    elif args.action == "snapshot":
        answer = proxy.createSnapshot(args.repo, args.image, {}, {})
    elif args.action == "copy":
        target = args.to or args.repo
        answer = proxy.copyImage(target, args.image, args.base or "", {}, {"participatingRepositories": [args.repo]})
        args.repo = target
    else:
        answer = proxy.removeImage(args.repo, args.image, {})
        return answer
    if answer["status"]["code"] != 0 or args.no_wait:
        return answer
    waited = wait_image(proxy, args.repo, answer["imageId"], out)
    if waited["status"]["code"] == 0:
        waited["imageId"] = answer["imageId"]
    return waited


def repo_command(argv: list[str], proxy: Any) -> dict:
    args = repo_parser().parse_args(argv)
    if args.action == "list":
        return proxy.getStorageRepositoryList()
    answer = proxy.checkStorageRepository(args.repo)
    if args.action == "check" or answer["status"]["code"] != 0:
        return answer
    started, unfixable = [], []
    for fix in answer["fixes"]:
        if not fix.get("fixable", True):
            unfixable.append(fix)  # a broken image no fix repairs: shown, for the admin to act on
            continue
        result = proxy.fixStorageRepository(args.repo, fix["fix"], {})
        started.append({"type": fix["type"], "imageId": fix["imageId"], "taskId": result.get("taskId", ""),
                        "status": result["status"]})
    return {"status": {"code": 0, "message": "OK"}, "started": started, "unfixable": unfixable}
