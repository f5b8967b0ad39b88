"""Driving images on a real hsmd, and looking at their volumes with the real qemu tools."""

from __future__ import annotations

import json
import os
import subprocess

from tests.waiting import wait_for

MiB = 1 << 20
GiB = 1 << 30


def ok(answer: dict) -> dict:
    assert answer["status"]["code"] == 0, answer
    return answer


def code(answer: dict) -> int:
    return answer["status"]["code"]


def wait_image(proxy, repo: str, image_id: str, timeout: float = 180.0, states=("optimized",),
               poll: float = 0.02) -> dict:
    """Wait until no fix works on the image and it is in one of `states`; returns its info.
    A fix that ended in an error fails the wait at once."""
    seen: list[dict] = [{}]

    def settled() -> bool:
        image = seen[0] = ok(proxy.getImageStatus(repo, image_id))["image"]
        if image["lastError"] and not image["tasks"] and image["state"] not in states:
            raise AssertionError(f"{image_id} failed: {image}")
        return not image["tasks"] and image["state"] in states

    wait_for(settled, timeout, what=lambda: f"{image_id} in {states}: still {seen[0]}", poll=poll)
    return ok(proxy.getImageInfo(repo, image_id))["image"]


def new_disk(proxy, repo: str = "local", size: int = GiB, base: str = "", **options) -> str:
    image_id = ok(proxy.createVirtualDisk(repo, str(size), base, {}, options))["imageId"]
    if options.get("autoFix", True):
        wait_image(proxy, repo, image_id, states=("optimized", "degraded"))
    return image_id


def new_snapshot(proxy, disk: str, repo: str = "local") -> str:
    image_id = ok(proxy.createSnapshot(repo, disk, {}, {}))["imageId"]
    wait_image(proxy, repo, image_id)
    return image_id


def top_path(proxy, repo: str, image_id: str) -> str:
    return ok(proxy.getImageInfo(repo, image_id))["image"]["volumes"][0]["path"]


def qemu_write(path: str, pattern: int, offset: int, length: int, fmt: str = "qcow2") -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", path],
                   check=True, capture_output=True)


def qemu_reads(path: str, pattern: int, offset: int, length: int) -> bool:
    """Whether the image (through its whole chain) holds `pattern` in that range."""
    done = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pattern} {offset} {length}", path],
                          capture_output=True, text=True)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def backing_chain(path: str) -> list[dict]:
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def qemu_check(path: str) -> None:
    """qemu-img check finds no corruption. Leaked clusters (exit 3) are allowed: a qemu-img killed
    with hsmd in the middle of a write leaves some, which waste space and harm no data."""
    done = subprocess.run(["qemu-img", "check", "-U", "-f", "qcow2", path], capture_output=True)
    if done.returncode not in (0, 3):
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)


def volume_files(repo_path: str) -> set[str]:
    return set(os.listdir(os.path.join(repo_path, "volumes")))


def local_path(daemon) -> str:
    return os.path.join(daemon.state_dir, "local")
