"""Every error hsm reports, each a class with a code.

Codes below 5000 are VDSM's own numbers (its storage exception module) for the
same condition, so VDSM and the engine read them as they always did; codes
from 5000 up are conditions VDSM did not have. `hsm-cli errors` prints this
table.
"""

from __future__ import annotations

import time


class HsmError(Exception):
    """An error a caller can act on; the API turns it into a status struct."""

    code = 100
    message = "General error"

    def __init__(self, detail: object = "") -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        if self.detail in ("", None):
            return self.message
        return f"{self.message}: {self.detail}"

    def status(self) -> dict:
        return {"code": self.code, "message": str(self)}

    def last_error(self) -> dict:
        """The status with when it happened, as an image's or a connection's lastError keeps it."""
        return {**self.status(), "time": f"{time.time():.0f}"}


def _error(name: str, code: int, message: str) -> type[HsmError]:
    return type(name, (HsmError,), {"code": code, "message": message})


# VDSM's numbers (storage_exception); only conditions hsm can meet are listed.
GeneralException = HsmError
VolumeDoesNotExist = _error("VolumeDoesNotExist", 201, "No such volume")
VolumeIsBusy = _error("VolumeIsBusy", 203, "The volume is in use")
VolumeImageHasChildren = _error("VolumeImageHasChildren", 204, "The volume has child volumes")
VolumeCreationError = _error("VolumeCreationError", 205, "The volume could not be created")
VolumeMetadataReadError = _error("VolumeMetadataReadError", 207, "The volume metadata could not be read")
VolumeMetadataWriteError = _error("VolumeMetadataWriteError", 208, "The volume metadata could not be written")
VolumeAlreadyExists = _error("VolumeAlreadyExists", 212, "A volume with this id exists")
CannotDeleteVolume = _error("CannotDeleteVolume", 222, "The volume could not be deleted")
CannotDeleteSharedVolume = _error("CannotDeleteSharedVolume", 223, "A shared (template) volume cannot be deleted")
PrepareIllegalVolumeError = _error("PrepareIllegalVolumeError", 227, "The image is not ready for use")
VolumeWasNotPreparedBeforeTeardown = _error("VolumeWasNotPreparedBeforeTeardown", 230, "The image was not prepared")
MergeSnapshotsError = _error("MergeSnapshotsError", 252, "The snapshots could not be merged")
CopyImageError = _error("CopyImageError", 261, "The image copy failed")
ImageIsNotLegalChain = _error("ImageIsNotLegalChain", 262, "The image's volume chain is not valid")
ImageDoesNotExistInSD = _error("ImageDoesNotExistInSD", 268, "No such image in the repository")
StoragePoolMasterNotFound = _error("StoragePoolMasterNotFound", 304, "Cannot find master domain")
StoragePoolUnknown = _error("StoragePoolUnknown", 309, "Unknown pool id, pool not connected")
StoragePoolAlreadyExists = _error("StoragePoolAlreadyExists", 316, "The storage pool exists")
CannotConnectMultiplePools = _error("CannotConnectMultiplePools", 323, "Another storage pool is connected")
StoragePoolWrongMaster = _error("StoragePoolWrongMaster", 324, "Wrong master domain or its version")
StoragePoolDescriptionTooLongError = _error("StoragePoolDescriptionTooLongError", 327,
                                            "The storage pool description is too long")
GetFileListError = _error("GetFileListError", 330, "Cannot list the files of the storage domain")
StorageDomainActionError = _error("StorageDomainActionError", 350, "Error in storage domain action")
StorageDomainCreationError = _error("StorageDomainCreationError", 351, "The repository could not be created")
StorageDomainNotInPool = _error("StorageDomainNotInPool", 353, "The storage domain is not in the pool")
StorageDomainDoesNotExist = _error("StorageDomainDoesNotExist", 358, "No such repository")
StorageDomainFSNotMounted = _error("StorageDomainFSNotMounted", 360, "The repository's file system is not mounted")
StorageDomainNotEmpty = _error("StorageDomainNotEmpty", 361, "The storage already holds data")
StorageDomainAlreadyExists = _error("StorageDomainAlreadyExists", 365, "The repository exists")
StorageDomainTypeError = _error("StorageDomainTypeError", 372, "Unknown or wrong repository format")
StorageDomainNotMemberOfPool = _error("StorageDomainNotMemberOfPool", 375, "The domain is not a member of the pool")
StorageDomainAccessError = _error("StorageDomainAccessError", 379, "The repository cannot be reached")
StorageDomainAlreadyAttached = _error("StorageDomainAlreadyAttached", 380, "The storage domain is attached to a pool")
CannotDetachMasterStorageDomain = _error("CannotDetachMasterStorageDomain", 383,
                                         "The master domain cannot be detached")
StorageDomainClassError = _error("StorageDomainClassError", 386, "Invalid domain class value")
StorageDomainDescriptionTooLongError = _error("StorageDomainDescriptionTooLongError", 387,
                                              "The storage domain description is too long")
CannotFormatAttachedStorageDomain = _error("CannotFormatAttachedStorageDomain", 391,
                                           "Cannot format an attached storage domain")
CannotFormatStorageDomainInConnectedPool = _error("CannotFormatStorageDomainInConnectedPool", 392,
                                                  "Cannot format a storage domain in a connected pool")
UnsupportedDomainVersion = _error("UnsupportedDomainVersion", 394, "Unsupported domain version")
NoSpaceLeftOnDomain = _error("NoSpaceLeftOnDomain", 397, "No space left in the repository")
UnknownTask = _error("UnknownTask", 401, "No such task")
AddTaskError = _error("AddTaskError", 405, "No room for another task")
TaskMetaDataSaveError = _error("TaskMetaDataSaveError", 407, "The task record could not be saved")
TaskMetaDataLoadError = _error("TaskMetaDataLoadError", 408, "The task record could not be read")
TaskStateError = _error("TaskStateError", 410, "Not allowed in the task's current state")
TaskStateTransitionError = _error("TaskStateTransitionError", 441, "The task cannot move to that state")
ActionStopped = _error("ActionStopped", 443, "The operation was stopped")
StorageServerConnectionError = _error("StorageServerConnectionError", 451, "The storage server connection failed")
StorageServerAccessPermissionError = _error("StorageServerAccessPermissionError", 469, "The storage path's permissions deny access")
MountError = _error("MountError", 477, "The storage could not be mounted")
StorageServerConnectionRefIdAlreadyInUse = _error("StorageServerConnectionRefIdAlreadyInUse", 478, "The connection id is in use")
StorageServerConnectionRefIdDoesNotExist = _error("StorageServerConnectionRefIdDoesNotExist", 479, "No such connection id")
AcquireLockFailure = _error("AcquireLockFailure", 651, "Could not acquire the lease")
IsSpm = _error("IsSpm", 656, "This host is the pool's SPM")
AcquireHostIdFailure = _error("AcquireHostIdFailure", 661, "This host has not joined the repository's lockspace")
HostIdMismatch = _error("HostIdMismatch", 700, "Host id not found or does not match the pool's host id")
ClusterLockInitError = _error("ClusterLockInitError", 701, "The repository's sanlock lockspace could not be initialized")
ResourceTimeout = _error("ResourceTimeout", 851, "Timed out waiting for a resource lock")
InvalidParameterException = _error("InvalidParameterException", 1000, "Invalid parameter")
MiscFileWriteException = _error("MiscFileWriteException", 2002, "A file could not be written")

# New conditions, numbered from 5000.
RequestIdConflict = _error("RequestIdConflict", 5000, "requestId already used with other arguments")
ConfigError = _error("ConfigError", 5001, "Invalid configuration")
NotAvailable = _error("NotAvailable", 5002, "Not available on this host")
SupervdsmUnavailable = _error("SupervdsmUnavailable", 5003, "supervdsmd is not reachable")
SupervdsmCallError = _error("SupervdsmCallError", 5004, "Privileged call failed")
StorageTimeout = _error("StorageTimeout", 5005, "Storage did not answer in time")
HookError = _error("HookError", 5006, "Lifecycle hook failed")
TaskIdExists = _error("TaskIdExists", 5007, "A task with this id exists")
TaskIdRequired = _error("TaskIdRequired", 5008, "Transparent mode: options.taskId is required")
SupervdsmPeerRefused = _error("SupervdsmPeerRefused", 5009, "This user may not call supervdsmd")
ImageExists = _error("ImageExists", 5010, "An image with this id exists")
ImageIsSnapshot = _error("ImageIsSnapshot", 5011, "A snapshot never changes")
RepositoryIdInUse = _error("RepositoryIdInUse", 5012, "The repository id is connected to other storage")
InvalidConnectionURI = _error("InvalidConnectionURI", 5014, "The storage URI is not valid")
InvalidFix = _error("InvalidFix", 5013, "The fix is not one checkStorageRepository gave for this repository")
HsmdUnavailable = _error("HsmdUnavailable", 5015, "hsmd is not reachable")
LsmUnavailable = _error("LsmUnavailable", 5016, "libstoragemgmt is not available on this host")
ArrayDoesNotExist = _error("ArrayDoesNotExist", 5017, "No such array in [offload] arrays")
ArrayUnreachable = _error("ArrayUnreachable", 5018, "The array cannot be reached through libstoragemgmt")
ArrayRequestFailed = _error("ArrayRequestFailed", 5019, "The array refused the request")
ArrayNameConflict = _error("ArrayNameConflict", 5020, "The array has a volume of this name")
ArrayPoolDoesNotExist = _error("ArrayPoolDoesNotExist", 5021, "No such pool on the array")
ArrayVolumeDoesNotExist = _error("ArrayVolumeDoesNotExist", 5022, "No such volume on the array")
ArrayNoSpace = _error("ArrayNoSpace", 5023, "Not enough space in the array's pool")
ArrayNoSupport = _error("ArrayNoSupport", 5024, "The array does not support this")
ArrayFsDoesNotExist = _error("ArrayFsDoesNotExist", 5025, "No such file system on the array")

# VDSM's numbers for the rest of its pool, OVF store and device verbs.
GetIsoListError = _error("GetIsoListError", 314, "Cannot get ISO list")
StoragePoolConnected = _error("StoragePoolConnected", 325, "Cannot perform action while storage pool is connected")
StorageDomainNotActive = _error("StorageDomainNotActive", 369, "Storage domain not active")
StorageDomainStatusError = _error("StorageDomainStatusError", 376, "Unsupported Storage Domain status")
StorageDomainTypeNotBackup = _error("StorageDomainTypeNotBackup", 378, "Domain type should be 'backup' but is not")
CurrentVersionTooAdvancedError = _error("CurrentVersionTooAdvancedError", 395,
                                        "The domain's version is more advanced than the one asked for")
DeviceNotFound = _error("DeviceNotFound", 466, "Device not found or not accessible")
MiscFileReadException = _error("MiscFileReadException", 2001, "Internal file read failure")

# More of VDSM's numbers, for its connection-reference and iSCSI discovery verbs.
StorageServerValidationError = _error("StorageServerValidationError", 453, "The connection information is not valid")
iSCSIDiscoveryError = _error("iSCSIDiscoveryError", 475, "iSCSI discovery failed")


# VDSM's numbers for LVM (block repositories): raised by hsm.storage.lvm.
VolumeGroupCreateError = _error("VolumeGroupCreateError", 502, "The volume group could not be created")
VolumeGroupExtendError = _error("VolumeGroupExtendError", 503, "The volume group could not be extended")
VolumeGroupSizeError = _error("VolumeGroupSizeError", 504, "Not enough free space in the volume group")
VolumeGroupAlreadyExistsError = _error("VolumeGroupAlreadyExistsError", 505, "A volume group with this name exists")
VolumeGroupDoesNotExist = _error("VolumeGroupDoesNotExist", 506, "No such volume group")
VolumeGroupRemoveError = _error("VolumeGroupRemoveError", 508, "The volume group could not be removed")
VolumeGroupReplaceTagError = _error("VolumeGroupReplaceTagError", 516, "The volume group's tags could not be changed")
CannotCreateLogicalVolume = _error("CannotCreateLogicalVolume", 550, "The logical volume could not be created")
LogicalVolumeExtendError = _error("LogicalVolumeExtendError", 554, "The logical volume could not be extended")
LogicalVolumeRenameError = _error("LogicalVolumeRenameError", 566, "The logical volume could not be renamed")
LogicalVolumeReplaceTagError = _error("LogicalVolumeReplaceTagError", 572, "The logical volume's tags could not be changed")
LogicalVolumeRemoveError = _error("LogicalVolumeRemoveError", 573, "The logical volume could not be removed")
PhysDevInitializationError = _error("PhysDevInitializationError", 601, "The device could not be made a physical volume")
InvalidPhysDev = _error("InvalidPhysDev", 606, "Not a physical device of this host")
LogicalVolumeAlreadyExists = _error("LogicalVolumeAlreadyExists", 604, "A logical volume with this name exists")
LogicalVolumeDoesNotExistError = _error("LogicalVolumeDoesNotExistError", 610, "No such logical volume")
LVMCommandError = _error("LVMCommandError", 621, "An LVM command failed")


# VDSM's numbers for making an LV usable ([irs] lv_activation): raised by supervdsm.activation.
CannotDeactivateLogicalVolume = _error("CannotDeactivateLogicalVolume", 552, "The logical volume could not be deactivated")
CannotActivateLogicalVolume = _error("CannotActivateLogicalVolume", 558, "The logical volume could not be activated")


def all_errors() -> list[type[HsmError]]:
    """Every error class, sorted by code."""
    found = {HsmError}
    for value in globals().values():
        if isinstance(value, type) and issubclass(value, HsmError):
            found.add(value)
    return sorted(found, key=lambda cls: cls.code)
