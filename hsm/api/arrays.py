"""The array verbs (libstoragemgmt, hsm.conf [offload] arrays): getArrayList, getArrayCapabilities,
refreshArrayCapabilities, getArrayPools, getArrayFileSystems, provisionArrayVolume, resizeArrayVolume,
deleteArrayVolume.

Every one answers 5016 on a host without libstoragemgmt, then 5017 for an arrayId not configured,
before it looks at its other arguments.
"""

from __future__ import annotations

from typing import Any

from hsm.api.dispatch import options_of
from hsm.api.verbs import require_str, verb
from hsm.arrays import PROVISIONING, Arrays
from hsm.errors import InvalidParameterException
from hsm.sizes import parse_size


def _size(value: Any) -> int:
    size = parse_size("size", value)
    if size == 0:
        raise InvalidParameterException("size=0: a volume has at least one byte")
    return size


class ArraysAPI:
    def __init__(self, arrays: Arrays) -> None:
        self._arrays = arrays

    @verb()
    def getArrayList(self) -> dict:
        return {"arrays": self._arrays.overview()}

    @verb()
    def getArrayCapabilities(self, arrayId: str) -> dict:
        return self._arrays.capabilities(arrayId)

    @verb()
    def refreshArrayCapabilities(self, arrayId: str) -> dict:
        return self._arrays.refresh(arrayId)

    @verb()
    def getArrayPools(self, arrayId: str) -> dict:
        return {"pools": self._arrays.pools(arrayId)}

    @verb()
    def getArrayFileSystems(self, arrayId: str) -> dict:
        return {"filesystems": self._arrays.filesystems(arrayId)}

    @verb(mutating=True)
    def provisionArrayVolume(self, arrayId: str, poolId: str, name: str, size: Any,
                             options: dict | None = None) -> dict:
        self._arrays.check(arrayId)
        provisioning = options_of(options).get("provisioning", "default")
        if provisioning not in PROVISIONING:
            raise InvalidParameterException(f"options.provisioning={provisioning!r}: one of {', '.join(PROVISIONING)}")
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise InvalidParameterException(f"name={name!r}: expected a non-empty printable string")
        return self._arrays.provision(arrayId, require_str("poolId", poolId), name, _size(size), provisioning)

    @verb(mutating=True)
    def resizeArrayVolume(self, arrayId: str, volumeId: str, size: Any, options: dict | None = None) -> dict:
        self._arrays.check(arrayId)
        options_of(options)
        return self._arrays.resize(arrayId, require_str("volumeId", volumeId), _size(size))

    @verb(mutating=True)
    def deleteArrayVolume(self, arrayId: str, volumeId: str, options: dict | None = None) -> dict:
        self._arrays.check(arrayId)
        options_of(options)
        return self._arrays.delete(arrayId, require_str("volumeId", volumeId))
