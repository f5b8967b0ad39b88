"""Making an LV of a block repository usable, the way `[irs] lv_activation` says, through supervdsmd.

`lvm`: lvchange -ay, the LV at /dev/<vg>/<lv> (hosts with device-mapper). `loop`: a loop device over
the LV's extents (hosts without device-mapper; supervdsm/activation.py). The caller sees one interface
and gets a device path either way.
"""

from __future__ import annotations

from hsm.errors import InvalidParameterException, SupervdsmCallError
from supervdsm.activation import check_names  # supervdsmd's own rule: a bad name never costs a privileged call
from supervdsm.client import SupervdsmClient


class LVActivation:
    """activate() answers the LV's block device; deactivate() makes it unusable. Both are idempotent.

    Errors keep supervdsmd's codes: 1000 for a bad name, 610 for no such LV, 558 (552) when the LV
    could not be activated (deactivated), with LVM's or losetup's words.
    """

    VERBS = {"lvm": ("lvmActivateLV", "lvmDeactivateLV"), "loop": ("loopActivateLV", "loopDeactivateLV")}

    def __init__(self, supervdsm: SupervdsmClient, way: str = "lvm") -> None:
        if way not in self.VERBS:
            raise InvalidParameterException(f"lv_activation={way!r}: expected lvm or loop")
        self.way = way
        self._supervdsm = supervdsm
        self._activate, self._deactivate = self.VERBS[way]

    def activate(self, vg_name: str, lv_name: str, read_only: bool = False) -> str:
        """The LV's device path (/dev/<vg>/<lv> or /dev/loopN)."""
        check_names(vg_name, lv_name)
        path = self._supervdsm.call(self._activate, vgName=vg_name, lvName=lv_name, readOnly=read_only)["path"]
        if not isinstance(path, str) or not path.startswith("/dev/"):
            raise SupervdsmCallError(f"{self._activate} {vg_name}/{lv_name} answered {path!r}, not a device")
        return path

    def deactivate(self, vg_name: str, lv_name: str) -> list[str]:
        """The devices taken away (none when the LV was not active)."""
        check_names(vg_name, lv_name)
        return list(self._supervdsm.call(self._deactivate, vgName=vg_name, lvName=lv_name)["detached"])

