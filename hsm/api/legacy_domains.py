"""VDSM's storage domain verbs, served by repositories: a domain's sdUUID is its repository's id and uuid."""

from __future__ import annotations

import time

from hsm.api.dispatch import options_of
from hsm.api.verbs import verb
from hsm.errors import GetFileListError, HsmError, InvalidParameterException, StorageDomainAccessError
from hsm.storage.domains import BLANK_UUID, CLASSES, Domains, check_description, number, same_remote
from hsm.storage.engine import Engine
from hsm.storage.pools import Pools
from hsm.storage.volumes import is_vdsm_image


def parse_bool(name: str, value: object) -> bool:
    """A flag as VDSM's clients send it: a boolean, 0 or 1, "true" or "false", or '' for false."""
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("", "true", "false"):
        return value.lower() == "true"
    raise InvalidParameterException(f"{name}={value!r}: expected a boolean")


class LegacyDomainsAPI:
    def __init__(self, engine: Engine, domains: Domains, pools: Pools) -> None:
        self._engine = engine
        self._domains = domains
        self._pools = pools

    @verb(mutating=True)
    def createStorageDomain(self, storageType: int, sdUUID: str, domainName: str, typeSpecificArg: str,
                            domClass: int, domVersion: int | str = "", options: dict | None = None) -> dict:
        options_of(options)
        self._domains.create(storageType, sdUUID, domainName, typeSpecificArg, domClass, domVersion)
        return {}

    @verb()
    def validateStorageDomain(self, sdUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        self._domains.validate(self._domains.get(sdUUID))
        return {}

    @verb(mutating=True)
    def formatStorageDomain(self, sdUUID: str, autoDetach: bool | str = False, options: dict | None = None) -> dict:
        options_of(options)
        auto_detach = parse_bool("autoDetach", autoDetach)
        repo = self._domains.get(sdUUID)
        self._pools.release_for_format(repo.uuid, auto_detach)
        self._domains.remove(repo.uuid)
        return {}

    @verb(mutating=True)
    def setStorageDomainDescription(self, sdUUID: str, description: str, options: dict | None = None) -> dict:
        options_of(options)
        description = check_description(description)
        self._domains.get(sdUUID).relabel(name=description)
        return {}

    @verb()
    def getStorageDomainInfo(self, sdUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        repo = self._domains.get(sdUUID)
        self._domains.validate(repo)
        return {"info": {**self._domains.info(repo), **self._pools.domain_info(repo.uuid)}}

    @verb()
    def getStorageDomainStats(self, sdUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        return {"stats": self._domains.stats(self._domains.get(sdUUID))}

    @verb()
    def getStorageDomainsList(self, spUUID: str = "", domainClass: int | str = "", storageType: int | str = "",
                              remotePath: str = "", options: dict | None = None) -> dict:
        options_of(options)
        if spUUID and spUUID != BLANK_UUID:
            candidates = sorted(self._pools.connected(spUUID).domains)
        else:
            candidates = self._domains.uuids()
        klass = number("domainClass", domainClass, default=0)
        kind = number("storageType", storageType, default=0)
        if not isinstance(remotePath, str):
            raise InvalidParameterException(f"remotePath={remotePath!r}: expected a string")
        found = []
        for sd_uuid in candidates:
            try:
                repo = self._domains.get(sd_uuid)
            except HsmError:
                continue  # unreachable: left out, as VDSM did
            info = self._domains.info(repo)
            if kind and self._domains.storage_type(repo) != kind:
                continue
            if klass and info["class"] != CLASSES.get(klass):
                continue
            if remotePath and not same_remote(remotePath, info["remotePath"]):
                continue
            found.append(sd_uuid)
        return {"domlist": found}

    @verb()
    def getImagesList(self, sdUUID: str, options: dict | None = None) -> dict:
        """VDSM's images: disks and templates (a snapshot that is an image's INTERNAL volume is none),
        and unreadable records, which may hold one."""
        options_of(options)
        repo = self._domains.get(sdUUID)
        return {"imageslist": [image_id for image_id in repo.live_ids()
                               if (image := repo.images.get(image_id)) is None or is_vdsm_image(image)]}

    @verb()
    def getFileList(self, sdUUID: str, pattern: str = "*", options: dict | None = None) -> dict:
        options_of(options)
        if not isinstance(pattern, str):
            raise InvalidParameterException(f"pattern={pattern!r}: expected a glob pattern")
        repo = self._domains.get(sdUUID)
        if repo.labels.get("domainClass") != "Iso":
            raise GetFileListError(f"{repo.uuid} is not an ISO domain")
        return {"files": self._domains.files(repo, pattern or "*")}

    @verb()
    def repoStats(self, options: dict | None = None) -> dict:
        """Every monitored domain by uuid, beside status: {code, lastCheck, delay, valid}."""
        options_of(options)
        now = time.time()
        stats = {}
        for repo_id, health in self._engine.health().items():
            repo = self._engine.repositories.get(repo_id)
            if repo is None:
                continue  # disconnected meanwhile
            stats[repo.uuid] = {"code": 0 if health.valid else StorageDomainAccessError.code,
                                "lastCheck": f"{now - health.last_check:.1f}" if health.last_check else "0.0",
                                "delay": f"{health.read_delay:.6f}", "valid": health.valid}
        return stats
