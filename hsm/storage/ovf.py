"""A pool's OVF store: the OVF text of each VM, kept on the pool's master domain or on an export domain.

VDSM kept one folder per VM under the domain's master/vms tree; hsm keeps one
file per VM, `vms/<vmUUID>.ovf` in the repository. Every write goes through
the repository's I/O helper, whose `write` is the atomic-write helper: after a
crash a VM's file holds its old OVF or its new one, whole, and a hung mount
stalls that helper only. Only a checked VM UUID (hsm.ids) ever names a file.
"""

from __future__ import annotations

import errno
import logging
import os

from hsm.errors import (
    InvalidParameterException,
    MiscFileReadException,
    NoSpaceLeftOnDomain,
    StorageDomainAccessError,
)
from hsm.ids import is_id, is_uuid
from hsm.storage.repository import VMS_FOLDER, FileRepository

log = logging.getLogger("hsm.storage.ovf")

SUFFIX = ".ovf"
MAX_OVF_BYTES = 4 << 20  # an engine's OVF is tens of KiB; a few MiB holds hundreds of disks and snapshots


def check_vm(value: object, name: str = "vmUUID") -> str:
    """A VM's UUID in VDSM's form; being an hsm.ids id too, it is one plain file name (no '/', never '..')."""
    if not isinstance(value, str) or not is_uuid(value) or not is_id(value):
        raise InvalidParameterException(f"{name}={value!r}: expected a VM UUID")
    return value


def parse_vm_list(vm_list: object) -> dict[str, bytes]:
    """updateVM's vmList, [{vm, ovf, imglist}], as {vmUUID: OVF in UTF-8}: all checked before anything is written.

    Empty entries are skipped, as VDSM did; imglist must be there (a comma-separated string), as VDSM required.
    """
    if not isinstance(vm_list, list):
        raise InvalidParameterException(f"vmList={vm_list!r}: expected a list of {{vm, ovf, imglist}}")
    found: dict[str, bytes] = {}
    for entry in vm_list:
        if not entry:
            continue
        if not isinstance(entry, dict) or not {"vm", "ovf", "imglist"} <= set(entry):
            raise InvalidParameterException(f"vmList entry {str(entry)[:200]!r}: expected {{vm, ovf, imglist}}")
        vm = check_vm(entry["vm"], "vmList.vm")
        if not isinstance(entry["ovf"], str) or not isinstance(entry["imglist"], str):
            raise InvalidParameterException(f"vmList entry of {vm}: ovf and imglist must be strings")
        try:
            data = entry["ovf"].encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameterException(f"vmList entry of {vm}: the OVF is not valid text") from None
        if len(data) > MAX_OVF_BYTES:
            raise InvalidParameterException(f"vmList entry of {vm}: an OVF of {len(data)} bytes, "
                                            f"at most {MAX_OVF_BYTES}")
        found[vm] = data
    return found


def _folder(repo: FileRepository) -> str:
    return os.path.join(repo.path, VMS_FOLDER)


def _path(repo: FileRepository, vm: str) -> str:
    return os.path.join(_folder(repo), check_vm(vm) + SUFFIX)


def _write_error(repo: FileRepository, e: OSError) -> Exception:
    if e.errno == errno.ENOSPC:
        return NoSpaceLeftOnDomain(repo.uuid)
    return StorageDomainAccessError(f"{repo.uuid}: {e}")


def write(repo: FileRepository, ovfs: dict[str, bytes]) -> None:
    """Store each VM's OVF, replacing what was there (the folder is made on first use); on a shared domain
    under its metadata-writer lease, as record changes, so that hosts write one at a time."""
    try:
        with repo.lock:
            if ovfs:
                repo.io.makedirs(_folder(repo))
            for vm, data in ovfs.items():
                repo.io.write(_path(repo, vm), data)
    except OSError as e:
        raise _write_error(repo, e) from None
    log.info("Domain %s: stored the OVF of %s", repo.uuid, ", ".join(ovfs) or "no VM")


def remove(repo: FileRepository, vm: str) -> None:
    """Forget a VM's OVF; one that is not there is not an error, as in VDSM."""
    try:
        with repo.lock:
            repo.io.remove(_path(repo, vm))
    except FileNotFoundError:
        return
    except OSError as e:
        raise _write_error(repo, e) from None
    log.info("Domain %s: removed the OVF of %s", repo.uuid, vm)


def vm_ids(repo: FileRepository) -> list[str]:
    """The VMs whose OVF the domain holds (an atomic write's temporary file is never one)."""
    try:
        names = repo.io.listdir(_folder(repo))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StorageDomainAccessError(f"{repo.uuid}: {e}") from None
    return [name[:-len(SUFFIX)] for name in names
            if name.endswith(SUFFIX) and is_uuid(name[:-len(SUFFIX)])]


def read(repo: FileRepository, vms: list[str] | None = None) -> dict[str, str]:
    """{vmUUID: OVF} of the VMs asked for (every VM when None); one the domain does not hold is left out."""
    found = {}
    for vm in vm_ids(repo) if vms is None else vms:
        try:
            data = repo.io.read(_path(repo, vm), MAX_OVF_BYTES + 1)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StorageDomainAccessError(f"{repo.uuid}: {e}") from None
        if len(data) > MAX_OVF_BYTES:
            raise MiscFileReadException(f"{repo.uuid}: the OVF of {vm} is over {MAX_OVF_BYTES} bytes")
        try:
            found[vm] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MiscFileReadException(f"{repo.uuid}: the OVF of {vm} is not UTF-8 text") from None
    return found


def copy(source: FileRepository, target: FileRepository) -> None:
    """Copy every OVF of `source` to `target` (the master role moving), as VDSM copied its master tree."""
    write(target, {vm: text.encode("utf-8") for vm, text in read(source).items()})
