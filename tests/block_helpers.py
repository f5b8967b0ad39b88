"""block-1 repositories for tests: an hsmd on real LVM over loop devices through a real supervdsmd.

LVM runs with activation off (the `lvm_dir` fixture's LVM_SYSTEM_DIR; no device-mapper here), so hsmd
runs with `[irs] lv_activation = loop`: each LV is used through a loop device over its extents. The
fixtures themselves are in tests/conftest.py: `block_hsmd`, `pvs` and `block_repo`.
"""

from __future__ import annotations

import json
import subprocess

MiB = 1 << 20
GiB = 1 << 30
EXTENT = 128 * MiB  # VDSM's extent size, which block-1 repositories use


def detach_loops_over(pvs_: list[str]) -> None:
    listing = json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True).stdout
                         or '{"loopdevices": []}')["loopdevices"]
    for loop in listing:
        if loop.get("back-file") in pvs_:
            subprocess.run(["losetup", "-d", loop["name"]], check=False)
