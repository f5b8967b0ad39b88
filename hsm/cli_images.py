"""hsm-cli's image and repository commands: the everyday work, in words rather than verbs.

    hsm-cli image create 10G                 # a new virtual disk in the 'local' repository; prints its id
    hsm-cli image snapshot DISK_ID           # prints the snapshot's id
    hsm-cli image create 10G --base SNAP_ID  # a disk on a snapshot
    hsm-cli image copy IMAGE_ID              # prints the copy's id; a progress bar while it copies
    hsm-cli image list                       # a table: id, kind, state, size, base
    hsm-cli image info ID                    # a table of fields and values
    hsm-cli image remove ID                  # prints the id of the task that gives the space back
    hsm-cli repo list | check [REPO] | fix [REPO]   # fix runs every fix check found; prints their task ids

Each command gives a Result: the full answer, which -o json prints, and its view for people and
scripts (a Table, or the one id a script needs). Creating commands wait until the image is usable
(or broken), with a progress bar on a terminal's stderr; --no-wait returns at once with the image id.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from hsm.errors import PrepareIllegalVolumeError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)
_SHOWN_UNITS = ((1 << 50, "P"), (1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K"))
OK = {"code": 0, "message": "OK"}


@dataclass
class Table:
    """Fixed columns under a header line; an empty cell shows as '-', so every row splits into the same fields."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def lines(self, headings: bool = True) -> list[str]:
        rows = [[str(cell) if cell not in ("", None) else "-" for cell in row] for row in self.rows]
        shown = ([self.columns] if headings else []) + rows
        if not shown:
            return []
        widths = [max(len(row[i]) for row in shown) for i in range(len(self.columns))]
        return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                for row in shown]


@dataclass
class Result:
    """A command's outcome: `answer` is what -o json prints, `view` what people and scripts read otherwise.

    `failure` fails the command although hsmd answered 0 (a disk whose fix failed is made, and broken);
    `notes` are for the admin's eyes, on stderr beside the view.
    """

    answer: dict
    view: Table | list[str] = field(default_factory=list)
    failure: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def error(self) -> dict:
        """The {code, message} the command failed with, {} on success."""
        status = self.answer.get("status", OK)
        return status if status.get("code", 0) != 0 else self.failure


def parse_size(text: str) -> str:
    """'10G', '512M', '1073741824' as a byte count (a decimal string, as hsmd wants it)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 10G, 512M or 1048576")
    return str(int(match.group(1)) * _UNITS[match.group(2).upper()])


def human_size(value: str | int) -> str:
    """A byte count as `hsm-cli image create` takes it and df -h shows it: 10G, 1.5G, 512M, 4096."""
    size = int(value)
    for unit, name in _SHOWN_UNITS:
        if size >= unit:
            return f"{size / unit:.1f}".removesuffix(".0") + name
    return str(size)


def output_options() -> argparse.ArgumentParser:
    """-o/--output, --json and --noheadings, for the top level and every command that prints an answer."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-o", "--output", choices=["table", "json"],
                         help="table (default: a table, or the one id a script needs) or json (the full answer)")
    options.add_argument("--json", dest="output", action="store_const", const="json", help="same as -o json")
    options.add_argument("--noheadings", action="store_true", default=None, help="tables without their header line")
    return options


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hsm-cli image")
    sub = top.add_subparsers(dest="action", required=True)
    shown = [output_options()]
    create = sub.add_parser("create", parents=shown, help="a new virtual disk; prints its id")
    create.add_argument("size", type=parse_size)
    create.add_argument("--base", help="the snapshot the disk starts from")
    snapshot = sub.add_parser("snapshot", parents=shown, help="a snapshot of a virtual disk; prints its id")
    snapshot.add_argument("image")
    copy = sub.add_parser("copy", parents=shown,
                          help="a copy of an image (into --to, default the same repository); prints its id")
    copy.add_argument("image")
    copy.add_argument("--to", help="target repository")
    copy.add_argument("--base", help="copy only what differs from this snapshot (already in the target)")
    remove = sub.add_parser("remove", parents=shown, help="remove an image; prints the id of the task that cleans up")
    remove.add_argument("image")
    listing = sub.add_parser("list", parents=shown, help="a table of the repository's images")
    listing.add_argument("--kind", choices=["disk", "snapshot"], help="only images of this kind")
    listing.add_argument("--page", type=int, default=1000, help="ids asked for per getImageList call (1-10000)")
    info = sub.add_parser("info", parents=shown, help="an image's fields and its volumes")
    info.add_argument("image")
    for command in (create, snapshot, copy):
        command.add_argument("--no-wait", action="store_true", help="print the id once the operation is committed")
    for command in (create, copy):
        command.add_argument("--strategy", choices=["space", "performance"], default="space",
                             help="space: on (a copy: over) a snapshot, only what differs; performance: whole")
    for command in sub.choices.values():
        command.add_argument("--repo", default="local", help="repository id (default: local)")
    return top


def repo_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hsm-cli repo", parents=[output_options()])
    top.add_argument("action", choices=["list", "check", "fix"])
    top.add_argument("repo", nargs="?", default="local")
    return top


def _failed(answer: dict) -> bool:
    return answer["status"]["code"] != 0


def _bar(image: dict, width: int = 30) -> str:
    percent = int(image.get("percentComplete", -1))
    if percent < 0:
        return f"[{'?' * width}]   ? stage {image.get('stage') or '-'} {image.get('state')}"
    filled = width * min(percent, 100) // 100
    return f"[{'#' * filled}{' ' * (width - filled)}] {percent:3d}% stage {image.get('stage') or '-'}"


def poll(fetch: Callable[[], dict], done: Callable[[dict], bool], out: TextIO, interval: float,
         bar: Callable[[dict], str], line: Callable[[dict], str] | None = None) -> dict:
    """Call `fetch` every `interval` seconds until its answer fails or is `done`, and return that answer.

    Each answer is shown on `out`: as a bar redrawn in place on a terminal, else as a
    `line` whenever it changes (no line at all without `line`).
    """
    tty, last = out.isatty(), None
    while True:
        answer = fetch()
        if not _failed(answer):
            shown = bar(answer) if tty else line(answer) if line else None
            if tty and shown is not None:
                out.write("\r" + shown)
            elif shown is not None and shown != last:
                out.write(shown + "\n")
            out.flush()
            last = shown
        if _failed(answer) or done(answer):
            if tty and last is not None:
                out.write("\n")
            return answer
        time.sleep(interval)


def wait_image(proxy: Any, repo: str, image_id: str, progress: TextIO, interval: float = 0.2) -> dict:
    """Poll until no fix works on the image any more; a progress bar when `progress` is a terminal."""
    return poll(lambda: proxy.getImageStatus(repo, image_id), lambda answer: not answer["image"]["tasks"],
                progress, interval, lambda answer: _bar(answer["image"]))


def _broken(image_id: str, image: dict) -> dict:
    """Why a waited-for image is not usable, as a status; {} when it is."""
    if image["state"] != "broken":
        return {}
    error = image["lastError"] or {"code": PrepareIllegalVolumeError.code,
                                   "message": "no fix is working on it; hsm-cli repo fix runs it"}
    return {"code": error["code"], "message": f"{image_id} is broken: {error['message']}"}


def _image_info_view(image: dict) -> Table:
    error = image["lastError"]
    percent = int(image["percentComplete"])
    rows = [["id", image["id"]], ["kind", image["kind"]], ["state", image["state"]],
            ["size", f"{human_size(image['size'])} ({image['size']} bytes)"],
            ["base", image["baseSnapshotId"]], ["stage", image["stage"]],
            ["progress", f"{percent}%" if percent >= 0 else ""],
            ["lastError", f"{error['code']}: {error['message']}" if error else ""],
            ["tasks", " ".join(image["tasks"])]]
    for volume in image["volumes"]:  # the chain, top first
        rows.append(["volume", f"{volume['path']} ({volume['format']}, {human_size(volume['allocated'])} allocated)"])
    if image["userData"]:
        rows.append(["userData", str(image["userData"])])
    return Table(["FIELD", "VALUE"], rows)


def list_images(proxy: Any, repo: str, kind: str | None, page: int = 1000) -> Result:
    """getImageList page by page (`page` ids each, in id order), then getImageInfo of each image (the list
    carries ids only; the info carries the base too)."""
    options: dict[str, Any] = {"kind": kind, "limit": page} if kind else {"limit": page}
    answer = proxy.getImageList(repo, options)
    if _failed(answer):
        return Result(answer)
    ids = list(answer["images"])
    while answer.get("marker"):  # the rest, from where this page ended
        answer = proxy.getImageList(repo, dict(options, marker=answer["marker"]))
        if _failed(answer):
            return Result(answer)
        ids += answer["images"]
    table = Table(["ID", "KIND", "STATE", "SIZE", "BASE"])
    details = {}
    for image_id in ids:
        info = proxy.getImageInfo(repo, image_id)
        if info["status"]["code"] == 268:
            continue  # removed since the list was made
        if _failed(info):
            return Result(info)
        image = details[image_id] = info["image"]
        table.rows.append([image_id, image["kind"], image["state"], human_size(image["size"]),
                           image["baseSnapshotId"]])
    return Result({"status": OK, "images": list(details), "details": details}, table)


def image_command(args: argparse.Namespace, proxy: Any, progress: TextIO | None = None) -> Result:
    """Run an `image` command line that parser() read; progress bars go to `progress` (default stderr)."""
    if args.action == "list":
        return list_images(proxy, args.repo, args.kind, args.page)
    if args.action == "info":
        answer = proxy.getImageInfo(args.repo, args.image)
        return Result(answer, [] if _failed(answer) else _image_info_view(answer["image"]))
    task_id = str(uuid.uuid4())  # the fix's task is known to the caller, and transparent mode requires one
    options: dict[str, Any] = {"taskId": task_id}
    if args.action == "remove":
        answer = proxy.removeImage(args.repo, args.image, options)
        return Result(answer) if _failed(answer) else Result(dict(answer, taskId=task_id), [task_id])
    if args.action == "create":
        options["strategy"] = args.strategy
        answer = proxy.createVirtualDisk(args.repo, args.size, args.base or "", {}, options)
    elif args.action == "snapshot":
        answer = proxy.createSnapshot(args.repo, args.image, {}, options)
    else:
        target = args.to or args.repo
        options["participatingRepositories"], options["strategy"] = [args.repo], args.strategy
        answer = proxy.copyImage(target, args.image, args.base or "", {}, options)
        args.repo = target
    if _failed(answer):
        return Result(answer)
    image_id = answer["imageId"]
    answer = dict(answer, taskId=task_id)
    if args.no_wait:
        return Result(answer, [image_id])
    waited = wait_image(proxy, args.repo, image_id, progress or sys.stderr)
    if _failed(waited):
        return Result(waited)
    return Result(dict(answer, image=waited["image"]), [image_id], _broken(image_id, waited["image"]))


def _check_view(fixes: list[dict]) -> Table:
    table = Table(["TYPE", "IMAGE", "FIXABLE", "DESCRIPTION"])
    for fix in fixes:
        if fix.get("fixable", True):
            prefix = f"{fix['imageId']}: "  # the IMAGE column says it already
            table.rows.append([fix["type"], fix["imageId"], "yes", fix["description"].removeprefix(prefix)])
        else:
            table.rows.append([fix["type"], fix["imageId"], "no", f"error {fix['code']}: {fix['reason']}"])
    return table


def _repos_view(repos: dict) -> Table:
    table = Table(["ID", "FORMAT", "CONNECTED", "VALID", "FREE", "TOTAL", "UUID"])
    for repo_id, repo in sorted(repos.items()):
        table.rows.append([repo_id, repo["format"], "yes" if repo["connected"] else "no",
                           "yes" if repo["valid"] else "no", human_size(repo["freeBytes"] or 0),
                           human_size(repo["totalBytes"] or 0), repo["uuid"]])
    return table


def fix_repository(proxy: Any, repo: str, fixes: list[dict]) -> Result:
    """Start every fixable entry of a check; the answer lists the others under `unfixable`."""
    started, unfixable, status = [], [], OK
    table = Table(["TASK", "TYPE", "IMAGE"])
    for fix in fixes:
        if not fix.get("fixable", True):
            unfixable.append(fix)  # a broken image no fix repairs: shown, for the admin to act on
            continue
        result = proxy.fixStorageRepository(repo, fix["fix"], {"taskId": str(uuid.uuid4())})
        started.append({"type": fix["type"], "imageId": fix["imageId"], "taskId": result.get("taskId", ""),
                        "status": result["status"]})
        if not _failed(result):
            table.rows.append([result["taskId"], fix["type"], fix["imageId"]])
        elif status is OK:
            status = result["status"]  # the first failure fails the command; the others are in the answer
    notes = [f"unfixable: {fix['imageId']}: error {fix['code']}: {fix['reason']}" for fix in unfixable]
    return Result({"status": status, "started": started, "unfixable": unfixable}, table, notes=notes)


def repo_command(args: argparse.Namespace, proxy: Any) -> Result:
    """Run a `repo` command line that repo_parser() read."""
    if args.action == "list":
        answer = proxy.getStorageRepositoryList()
        return Result(answer, [] if _failed(answer) else _repos_view(answer["repos"]))
    answer = proxy.checkStorageRepository(args.repo)
    if _failed(answer):
        return Result(answer)
    if args.action == "check":
        return Result(answer, _check_view(answer["fixes"]))
    return fix_repository(proxy, args.repo, answer["fixes"])
