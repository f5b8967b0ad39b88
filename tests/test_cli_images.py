"""hsm-cli's image and repo commands against a real hsmd and its embedded 'local' repository.

What an admin sees: tables and the one id a script needs on stdout, the whole answer with -o json,
failures on stderr with their code.
"""

import json
import os
import subprocess

from tests.hsmd import HSM_CLI
from tests.images_helpers import MiB, qemu_reads, qemu_write


def run(hsmd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([HSM_CLI, "--address", hsmd.address, *args], capture_output=True, text=True, timeout=120)


def new_id(hsmd, *args) -> str:
    """The id a creating command prints, checked to be all it prints."""
    done = run(hsmd, *args)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert len(done.stdout.split()) == 1 and done.stdout.endswith("\n"), done.stdout
    return done.stdout.strip()


def whole(hsmd, *args) -> tuple[int, dict]:
    done = run(hsmd, *args, "-o", "json")
    return done.returncode, json.loads(done.stdout)


def table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header, {first cell: row}) of a printed table."""
    header, *rows = text.splitlines()
    return header.split(), {row.split()[0]: row.split() for row in rows}


def fields(text: str) -> dict[str, list[str]]:
    """`image info`'s FIELD VALUE table: each field's values (volume repeats)."""
    header, *rows = text.splitlines()
    assert header.split() == ["FIELD", "VALUE"]
    found: dict[str, list[str]] = {}
    for row in rows:
        name, value = row.split(maxsplit=1)
        found.setdefault(name, []).append(value)
    return found


def test_create_snapshot_copy_list_remove(hsmd, proxy):
    disk = new_id(hsmd, "image", "create", "1G")
    _, info = whole(hsmd, "image", "info", disk)
    assert info["image"]["state"] == "optimized" and info["image"]["size"] == str(1 << 30)
    qemu_write(info["image"]["volumes"][0]["path"], 0x3C, 0, 64 * MiB)
    snapshot = new_id(hsmd, "image", "snapshot", disk)
    on_it = new_id(hsmd, "image", "create", "2G", "--base", snapshot, "--strategy", "performance")
    copy = new_id(hsmd, "image", "copy", disk)
    _, copy_info = whole(hsmd, "image", "info", copy)
    assert qemu_reads(copy_info["image"]["volumes"][0]["path"], 0x3C, 0, 64 * MiB)
    whole_copy = new_id(hsmd, "image", "copy", disk, "--strategy", "performance")
    assert len(whole(hsmd, "image", "info", whole_copy)[1]["image"]["volumes"]) == 1

    listed = run(hsmd, "image", "list")
    header, rows = table(listed.stdout)
    assert header == ["ID", "KIND", "STATE", "SIZE", "BASE"]
    assert rows == {disk: [disk, "disk", "optimized", "1G", snapshot],  # the disk writes on above its snapshot
                    snapshot: [snapshot, "snapshot", "optimized", "1G", "-"],
                    on_it: [on_it, "disk", "optimized", "2G", snapshot],
                    copy: [copy, "disk", "optimized", "1G", snapshot],  # strategy space: over the snapshot
                    whole_copy: [whole_copy, "disk", "optimized", "1G", "-"]}
    kind_at = listed.stdout.index("KIND")  # fixed columns: every row's kind starts under the header's
    assert all(line[kind_at - 1] == " " and line[kind_at] != " " for line in listed.stdout.splitlines())

    rc, as_json = whole(hsmd, "image", "list")
    assert rc == 0 and sorted(as_json["images"]) == sorted(rows)
    assert as_json["details"][snapshot]["kind"] == "snapshot"

    task = new_id(hsmd, "image", "remove", copy)
    assert proxy.getTaskStatus(task)["taskStatus"]["verb"] == "removeImage"
    waited = run(hsmd, "task", "wait", task, "--interval", "0.05")
    assert waited.returncode == 0 and '"taskResult": "success"' in waited.stdout
    assert copy not in table(run(hsmd, "image", "list").stdout)[1]
    checked = run(hsmd, "repo", "check")
    assert checked.returncode == 0 and checked.stdout == "TYPE  IMAGE  FIXABLE  DESCRIPTION\n"
    header, repos = table(run(hsmd, "repo", "list").stdout)
    assert header == ["ID", "FORMAT", "CONNECTED", "VALID", "FREE", "TOTAL", "UUID"]
    assert repos["local"][:4] == ["local", "localfs-1", "yes", "yes"]
    assert whole(hsmd, "repo", "list")[1]["repos"]["local"]["format"] == "localfs-1"


def test_info_shows_fields_and_the_chain(hsmd):
    disk = new_id(hsmd, "image", "create", "10G")
    snapshot = new_id(hsmd, "image", "snapshot", disk)
    done = run(hsmd, "image", "info", disk)
    assert done.returncode == 0 and done.stderr == ""
    shown = fields(done.stdout)
    assert shown["id"] == [disk] and shown["kind"] == ["disk"] and shown["state"] == ["optimized"]
    assert shown["size"] == ["10G (10737418240 bytes)"]
    assert shown["base"] == [snapshot] and shown["lastError"] == ["-"] and shown["tasks"] == ["-"]
    _, info = whole(hsmd, "image", "info", disk)
    assert [value.split()[0] for value in shown["volume"]] == [vol["path"] for vol in info["image"]["volumes"]]


def test_json_and_noheadings_for_scripts(hsmd):
    disk = new_id(hsmd, "image", "create", "512M")
    snapshot = new_id(hsmd, "image", "snapshot", disk)
    rc, created = whole(hsmd, "image", "create", "1G")
    assert rc == 0 and created["image"]["state"] == "optimized" and created["image"]["kind"] == "disk"
    assert created["status"] == {"code": 0, "message": "OK"} and created["taskId"] and created["imageId"]
    done = run(hsmd, "image", "list", "--kind", "snapshot", "--noheadings")
    assert done.stdout == f"{snapshot}  snapshot  optimized  512M  -\n"
    before = subprocess.run([HSM_CLI, "--address", hsmd.address, "--json", "image", "list", "--kind", "snapshot"],
                            capture_output=True, text=True, timeout=60)
    assert json.loads(before.stdout)["images"] == [snapshot]


def test_no_wait_prints_the_id_at_once(hsmd, proxy):
    pending = new_id(hsmd, "image", "create", "1G", "--no-wait")
    assert proxy.getImageStatus("local", pending)["status"]["code"] == 0


def test_failures_go_to_stderr_with_their_code(hsmd):
    done = run(hsmd, "image", "create", "ten gigs")
    assert done.returncode == 2 and "expected a size such as 10G" in done.stderr
    done = run(hsmd, "image", "snapshot", "no-such-disk")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "hsm-cli: error 268: No such image in the repository: no-such-disk in repository local\n"
    rc, answer = whole(hsmd, "image", "snapshot", "no-such-disk")
    assert rc == 1 and answer["status"]["code"] == 268
    done = run(hsmd, "image", "list", "--repo", "nowhere")
    assert done.returncode == 1 and done.stdout == "" and done.stderr.startswith("hsm-cli: error ")


def test_a_disk_that_ends_broken_is_a_failure(hsmd):
    disk = new_id(hsmd, "image", "create", "1G")
    snapshot = new_id(hsmd, "image", "snapshot", disk)
    _, info = whole(hsmd, "image", "info", snapshot)
    with open(info["image"]["volumes"][0]["path"], "r+b") as volume:
        volume.write(bytes(4096))  # no qcow2 header any more: qemu-img cannot read it as a backing file
    done = run(hsmd, "image", "create", "1G", "--base", snapshot)
    assert done.returncode == 1
    broken = done.stdout.strip()  # made, and broken: the admin has its id to remove it
    assert done.stderr.startswith(f"hsm-cli: error 205: {broken} is broken: The volume could not be created")
    assert table(run(hsmd, "image", "list").stdout)[1][broken][2] == "broken"


def test_copy_shows_a_progress_bar_on_a_terminal(hsmd):
    """On a terminal the bar is drawn on stderr, so `C=$(hsm-cli image copy ...)` gets the id alone."""
    disk = new_id(hsmd, "image", "create", "1G")
    _, info = whole(hsmd, "image", "info", disk)
    qemu_write(info["image"]["volumes"][0]["path"], 0x3D, 0, 512 * MiB)
    line = f'C=$({HSM_CLI} --address {hsmd.address} image copy {disk}); echo "copy=$C"'
    done = subprocess.run(["script", "-qec", line, "/dev/null"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    frames = [line for line in done.stdout.replace("\r", "\n").splitlines() if line.startswith("[")]
    # How many frames stage 1 gets depends on the machine's speed; the bar ends full either way.
    assert frames and all("stage" in frame for frame in frames), frames
    assert "100% stage 2/2" in frames[-1], frames
    copy = done.stdout.split("copy=")[1].split()[0]
    assert copy in table(run(hsmd, "image", "list").stdout)[1]


def test_repo_fix_runs_what_it_can_and_shows_what_it_cannot(hsmd, proxy):
    broken = new_id(hsmd, "image", "create", "1G")
    pending = new_id(hsmd, "image", "create", "1G", "--no-wait")
    _, info = whole(hsmd, "image", "info", broken)
    os.unlink(info["image"]["volumes"][0]["path"])
    checked = run(hsmd, "repo", "check")
    header, rows = table(checked.stdout)
    assert header == ["TYPE", "IMAGE", "FIXABLE", "DESCRIPTION"]
    assert rows["mend"][1:4] == [broken, "no", "error"]
    fixed = run(hsmd, "repo", "fix")
    assert fixed.returncode == 0
    header, started = table(fixed.stdout)
    assert header == ["TASK", "TYPE", "IMAGE"]
    for task, row in started.items():
        assert proxy.getTaskStatus(task)["status"]["code"] == 0, row
    assert fixed.stderr.startswith(f"hsm-cli: unfixable: {broken}: error 201: ")
    rc, as_json = whole(hsmd, "repo", "fix")
    assert rc == 0 and [entry["imageId"] for entry in as_json["unfixable"]] == [broken]
    assert as_json["unfixable"][0]["code"] == 201
    assert all(entry["status"]["code"] == 0 for entry in as_json["started"])
    assert run(hsmd, "image", "info", pending).returncode == 0
