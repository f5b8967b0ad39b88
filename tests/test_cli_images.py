"""hsm-cli's image and repo commands against a real hsmd and its embedded 'local' repository."""

import json
import os
import subprocess

from tests.hsmd import HSM_CLI
from tests.images_helpers import MiB, qemu_reads, qemu_write


def cli(hsmd, *args) -> tuple[int, dict]:
    done = subprocess.run([HSM_CLI, "--address", hsmd.address, *args], capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(done.stdout)


def test_create_snapshot_copy_list_remove(hsmd):
    rc, created = cli(hsmd, "image", "create", "1G")
    assert rc == 0 and created["image"]["state"] == "optimized" and created["image"]["size"] == str(1 << 30)
    disk = created["imageId"]
    _, info = cli(hsmd, "image", "info", disk)
    qemu_write(info["image"]["volumes"][0]["path"], 0x3C, 0, 64 * MiB)
    rc, snapshot = cli(hsmd, "image", "snapshot", disk)
    assert rc == 0 and snapshot["image"]["kind"] == "snapshot"
    rc, on_it = cli(hsmd, "image", "create", "2G", "--base", snapshot["imageId"], "--strategy", "performance")
    assert rc == 0 and on_it["image"]["state"] == "optimized"
    rc, copy = cli(hsmd, "image", "copy", disk)
    assert rc == 0 and copy["image"]["state"] == "optimized"
    _, copy_info = cli(hsmd, "image", "info", copy["imageId"])
    assert qemu_reads(copy_info["image"]["volumes"][0]["path"], 0x3C, 0, 64 * MiB)
    _, listed = cli(hsmd, "image", "list")
    assert set(listed["images"]) == {disk, snapshot["imageId"], on_it["imageId"], copy["imageId"]}
    assert cli(hsmd, "image", "remove", copy["imageId"])[0] == 0
    rc, fixes = cli(hsmd, "repo", "check")
    assert rc == 0 and all(fix["type"] == "clean" for fix in fixes["fixes"])
    rc, repos = cli(hsmd, "repo", "list")
    assert repos["repos"]["local"]["format"] == "localfs-1"


def test_bad_sizes_and_unknown_images_exit_nonzero(hsmd):
    done = subprocess.run([HSM_CLI, "--address", hsmd.address, "image", "create", "ten gigs"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "expected a size such as 10G" in done.stderr
    rc, answer = cli(hsmd, "image", "snapshot", "no-such-disk")
    assert rc == 1 and answer["status"]["code"] == 268


def test_copy_shows_a_progress_bar_on_a_terminal(hsmd):
    _, created = cli(hsmd, "image", "create", "1G")
    _, info = cli(hsmd, "image", "info", created["imageId"])
    qemu_write(info["image"]["volumes"][0]["path"], 0x3D, 0, 512 * MiB)
    done = subprocess.run(["script", "-qec", f"{HSM_CLI} --address {hsmd.address} image copy {created['imageId']}",
                           "/dev/null"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    frames = [line for line in done.stdout.replace("\r", "\n").splitlines() if line.startswith("[")]
    assert any("%" in frame and "stage 1/2" in frame for frame in frames), frames


def test_repo_fix_runs_what_it_can_and_shows_what_it_cannot(hsmd):
    _, broken = cli(hsmd, "image", "create", "1G")
    _, pending = cli(hsmd, "image", "create", "1G", "--no-wait")
    _, info = cli(hsmd, "image", "info", broken["imageId"])
    os.unlink(info["image"]["volumes"][0]["path"])
    rc, fixed = cli(hsmd, "repo", "fix")
    assert rc == 0 and [entry["imageId"] for entry in fixed["unfixable"]] == [broken["imageId"]]
    assert "missing" in fixed["unfixable"][0]["reason"]
    assert all(entry["status"]["code"] == 0 for entry in fixed["started"])
    assert cli(hsmd, "image", "info", pending["imageId"])[0] == 0
