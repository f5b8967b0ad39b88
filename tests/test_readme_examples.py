"""README's shell examples, run as written against a real hsmd: what a new user types must work.

The ```sh blocks of each section below run line by line in one bash, at the
top of the checkout (the examples say `.venv/bin/hsm-cli`), with $HSM_ADDRESS
naming a hsmd started for the test. Every line must exit 0 and say nothing on
stderr; the lines whose output a reader is promised something about are checked
for it, against hsmd's own answers, before the next line runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass

import pytest

from tests.hsmd import HSM_CLI
from tests.waiting import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("Images in five commands", "hsm-cli")
_ASSIGNED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=\$\(")
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def readme_section(title: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def shell_examples(title: str) -> list[str]:
    """The command lines of the section's ```sh blocks, in order."""
    blocks = re.findall(r"^```sh\n(.*?)^```", readme_section(title), re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@dataclass
class Step:
    line: str
    rc: int
    out: str  # what the command printed: for NAME=$(...), the value NAME took
    err: str

    @property
    def command(self) -> str:
        """The line without its assignment and its comment."""
        body = _ASSIGNED.sub("", self.line).split("  #")[0].strip()
        return body.removesuffix(")") if _ASSIGNED.match(self.line) else body


class Shell:
    """One bash at the top of the checkout, fed the lines one at a time, as a reader types them into a terminal."""

    def __init__(self, address: str, scratch: str) -> None:
        self.scratch = scratch
        self.count = 0
        env = dict(os.environ, HSM_ADDRESS=address)
        self.bash = subprocess.Popen(["bash"], stdin=subprocess.PIPE, cwd=ROOT, env=env, text=True)

    def run(self, line: str, timeout: float = 300.0) -> Step:
        """Run one line; its output apart, and for NAME=$(...) the value NAME took as what it printed."""
        path = os.path.join(self.scratch, str(self.count))
        self.count += 1
        assigned = _ASSIGNED.match(line)
        shown = f'printf "%s\\n" "${assigned.group(1)}" >"{path}.out"; ' if assigned else ""
        self.bash.stdin.write(f'{{ {line}\n}} <"/dev/null" >"{path}.out" 2>"{path}.err"; echo $? >"{path}.tmp"; '
                              f'{shown}mv "{path}.tmp" "{path}.rc"\n')
        self.bash.stdin.flush()
        wait_for(lambda: os.path.exists(f"{path}.rc") or self.bash.poll() is not None, timeout, f"end of {line!r}")
        assert os.path.exists(f"{path}.rc"), f"bash exited {self.bash.returncode} at {line!r}"

        def read(kind: str) -> str:
            with open(f"{path}.{kind}") as f:
                return f.read()

        return Step(line, int(read("rc")), read("out"), read("err"))

    def close(self) -> None:
        self.bash.stdin.close()
        self.bash.wait(30)


def table(text: str) -> tuple[list[str], list[list[str]]]:
    header, *rows = text.splitlines()
    return header.split(), [row.split() for row in rows]


def check_step(step: Step, proxy) -> None:
    """What the README promises the reader sees for this command, checked against hsmd itself."""
    command = step.command
    images = proxy.getImageList("local")["images"]
    word = command.split()[1] if command.startswith(".venv/bin/hsm-cli") else ""
    verb_call = word not in ("", "config", "errors", "task", "image", "repo")  # prints the verb's whole answer
    if re.search(r"hsm-cli image (create|snapshot|copy) ", command):
        assert _ID.match(step.out.strip()) and step.out.count("\n") == 1, "one imageId and nothing else"
        image = proxy.getImageInfo("local", step.out.strip())["image"]
        assert image["state"] == "optimized"
        assert image["kind"] == ("snapshot" if " snapshot " in command else "disk")
        if "--base" in command:
            assert image["baseSnapshotId"], "a disk on a snapshot reads through it"
    elif command.endswith("hsm-cli image list"):
        columns, rows = table(step.out)
        assert columns == ["ID", "KIND", "STATE", "SIZE", "BASE"]
        assert sorted(row[0] for row in rows) == sorted(images)
        assert all(row[2] == "optimized" and row[3] in ("10G", "1G") for row in rows), rows
    elif command.endswith("hsm-cli repo check"):
        assert table(step.out)[0] == ["TYPE", "IMAGE", "FIXABLE", "DESCRIPTION"]
    elif command.endswith("hsm-cli repo list"):
        columns, rows = table(step.out)
        assert columns[:4] == ["ID", "FORMAT", "CONNECTED", "VALID"]
        assert [row[:4] for row in rows] == [["local", "localfs-1", "yes", "yes"]]
    elif re.search(r"hsm-cli image remove ", command):
        assert _ID.match(step.out.strip())
        assert proxy.getTaskStatus(step.out.strip())["taskStatus"]["verb"] == "removeImage", "a task hsmd knows"
    elif "-o json" in command or verb_call:
        assert json.loads(step.out)["status"] == {"code": 0, "message": "OK"}
    elif re.search(r"hsm-cli task wait ", command):
        assert json.loads(step.out[step.out.index("{"):])["taskResult"] == "success"
    elif re.search(r"hsm-cli config dump", command):
        assert "[rpc]\n" in step.out
    elif command.endswith("hsm-cli errors"):
        assert "  268  ImageDoesNotExistInSD" in step.out
    elif command.startswith("curl"):
        assert "hsm_rpc_calls_total{" in step.out


@pytest.mark.parametrize("title", SECTIONS)
def test_readme_examples_run_as_written(title, make_hsmd, tmp_path):
    lines = shell_examples(title)
    assert lines, f"no ```sh example in '{title}'"
    assert os.path.samefile(os.path.join(ROOT, ".venv", "bin", "hsm-cli"), HSM_CLI), "the examples' hsm-cli is not ours"
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    shell = Shell(daemon.address, str(tmp_path))
    try:
        for line in lines:
            step = shell.run(line)
            assert step.rc == 0 and step.err == "", f"{step.line}\nexit {step.rc}\n{step.err}"
            check_step(step, proxy)
    finally:
        shell.close()


def test_the_five_commands_make_what_they_say():
    """The first section is the tour: make sure it still makes a disk, a snapshot, a disk on it and a copy."""
    commands = " ".join(shell_examples("Images in five commands"))
    for words in ("image create", "image snapshot", "--base", "image copy", "image list", "repo check"):
        assert words in commands
