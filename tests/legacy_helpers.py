"""Running a legacy-verb flow two ways (the `both` fixture in conftest.py): through vdsm_shim's ServiceProxy
to a real hsmd, and in-process with no hsmd; both must answer the same (paths, free space and times aside)."""

import contextlib
import os
import re

from hsm import config as hsmconfig
from hsm.api.app import Application
from vdsm_shim import ServiceProxy
from vdsm_shim.inprocess import InProcess

SD = "11111111-1111-4111-8111-111111111111"
ISO = "22222222-2222-4222-8222-222222222222"
SP = "33333333-3333-4333-8333-333333333333"
OTHER = "44444444-4444-4444-8444-444444444444"
BLANK = "00000000-0000-0000-0000-000000000000"
VOLATILE = {"disktotal", "diskfree", "lastCheck", "delay", "ctime"}


def same(answers: list, root: str) -> list:
    """Answers with the side's storage root named <root> and what changes between two runs left out."""
    def clean(value):
        if isinstance(value, dict):
            return {key: "-" if key in VOLATILE else clean(item) for key, item in value.items()
                    if not re.fullmatch(r"[0-9a-f-]{36}", key) or key in (SD, ISO, SP, OTHER)}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value.replace(root, "<root>") if isinstance(value, str) else value
    return clean(answers)


def run_both(both, flow) -> list:
    seen = [same(flow(irs, root), root) for irs, root in both]
    assert seen[0] == seen[1]
    return seen[0]


def listing(root: str) -> list:
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, dirs, files in os.walk(root) for name in dirs + files)


class InProcessWith(InProcess):
    """vdsm_shim's in-process hsm built from a whole configuration: VDSM's [irs] cannot name supervdsmd's socket."""

    def __init__(self, config: hsmconfig.Config) -> None:
        self.config = config
        self.app = Application(config)


@contextlib.contextmanager
def sides_with(make_hsmd, tmp_path, supervdsmd):
    """[(irs, root)] as the `both` fixture, each side asking `supervdsmd` for its privileged acts."""
    daemon = make_hsmd(config={"supervdsm": {"socket": supervdsmd.socket}}).start()
    remote = ServiceProxy(daemon.address)
    here = InProcessWith(hsmconfig.load(None, {("irs", "state_dir"): str(tmp_path / "in-process"),
                                               ("supervdsm", "socket"): supervdsmd.socket}))
    try:
        yield [(remote, str(tmp_path / "hsmd")), (here, str(tmp_path / "in-process"))]
    finally:
        remote.close()
        here.close()
