"""Real LVM over loop devices for tests: whether this machine can, and lvm run here as root, outside hsm.

The `loops` fixture (tests/conftest.py) makes the loop devices and cleans them up with these helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from hsm.storage.lvm import lvm_config


def _losetup_works() -> bool:
    if os.geteuid() != 0 or shutil.which("lvm") is None or shutil.which("losetup") is None:
        return False
    return subprocess.run(["losetup", "-f"], capture_output=True).returncode == 0


real_lvm = pytest.mark.skipif(not _losetup_works(), reason="needs root, lvm2 and a free loop device (losetup -f)")


def raw_lvm(lvm_dir, devices, command, *args):
    """lvm run here as root, not through hsm: what a user would look at, with its own filter."""
    done = subprocess.run(["lvm", command, "--config", lvm_config(devices), *args], capture_output=True, text=True,
                          env={**os.environ, "LVM_SYSTEM_DIR": lvm_dir, "LVM_SUPPRESS_FD_WARNINGS": "1"})
    return done


def report(lvm_dir, devices, command, key, *args):
    done = raw_lvm(lvm_dir, devices, command, "--reportformat", "json", "--units", "b", "--nosuffix", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["report"][0][key]


def pv_labels(lvm_dir, devices):
    """{device: vg name or ""} of the devices that carry a PV label."""
    return {pv["pv_name"]: pv["vg_name"] for pv in report(lvm_dir, devices, "pvs", "pv", "-o", "pv_name,vg_name")}
