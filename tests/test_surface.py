"""Nothing dead on the surface: every error hsm lists is raised by its code, every option it ships is read.

Each error class's own behaviour is tested where it is raised; this guards the
tables, so that `hsm-cli errors` and the shipped hsm.conf never promise what
nothing does.
"""

import pathlib
import re
import urllib.parse

import pytest

from hsm import config as hsmconfig
from hsm import errors
from hsm.connections import uri
from hsm.ids import IQN
from supervdsm import iscsi

TOP = pathlib.Path(__file__).resolve().parent.parent


def _source(*leave_out: str) -> str:
    return "\n".join(path.read_text() for folder in ("hsm", "supervdsm", "vdsm_shim")
                     for path in sorted((TOP / folder).rglob("*.py")) if path.name not in leave_out)


def test_every_listed_error_is_used_by_the_code():
    code = re.sub(r"^\s*(from|import) .*$|^\s+\w+,$", "", _source("errors.py"), flags=re.M)  # imports aside
    unused = [f"{cls.code} {cls.__name__}" for cls in errors.all_errors()[1:]
              if not re.search(rf"\b{cls.__name__}\b", code)]
    assert unused == []


def test_every_shipped_option_is_read_by_the_code():
    code = _source("config.py")
    unread = [f"[{opt.section}] {opt.name}" for opt in hsmconfig.OPTIONS.values() if not opt.coming
              and not re.search(rf"\.{opt.name}\b|[\"']{opt.name}[\"']", code)]
    assert unread == []


@pytest.mark.parametrize("name, good", [
    ("iqn.2026-11.org.example:disk1", True), ("iqn.2026-11.org.example", True),
    ("eui.02004567A425678D", True), ("naa.60014055F2F7B2A1", True), ("naa." + "6" * 32, True),
    ("naa.123", False), ("naa." + "6" * 24, False), ("iqn.2026-11.org.example:disk1\n", False),
    ("iqn.\u0662\u0660\u0662\u0666-11.org.example", False), ("iqn.2026-11.org.example:a;b", False),
])
def test_one_iscsi_name_rule_for_uris_and_supervdsmd(name, good):
    """hsmd's URI parser and supervdsmd's iscsiadm arguments accept exactly the same target names."""
    def hsmd_takes() -> bool:
        try:
            uri.parse(f"iscsi://127.0.0.1:3260/{urllib.parse.quote(name)}")
        except errors.InvalidConnectionURI:
            return False
        return True

    def supervdsmd_takes() -> bool:
        try:
            iscsi._check("target", IQN, name)
        except errors.InvalidParameterException:
            return False
        return True

    assert (hsmd_takes(), supervdsmd_takes()) == (good, good)
