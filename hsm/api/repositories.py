"""The repository verbs: create, connect, disconnect, list, check and fix."""

from __future__ import annotations

from hsm.api.dispatch import options_of
from hsm.api.verbs import require_str, verb
from hsm.errors import InvalidParameterException
from hsm.storage import answers, check
from hsm.storage.engine import Engine
from hsm.storage.options import MAX_PAGE, ImageOptions


def _params(value: object) -> dict:
    if not isinstance(value, dict):
        raise InvalidParameterException(f"connectionParameters={value!r}: expected a struct")
    return value


class RepositoriesAPI:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @verb(mutating=True)
    def createStorageRepository(self, repoFormat: str, connectionParameters: dict, options: dict | None = None) \
            -> dict:
        options = options_of(options)
        opts = ImageOptions.parse({name: value for name, value in options.items() if name != "array"})
        repo_uuid = self._engine.create_repository(require_str("repoFormat", repoFormat),
                                                   _params(connectionParameters), force=opts.force,
                                                   array=options.get("array"))
        return {"repoUuid": repo_uuid}

    @verb(mutating=True)
    def connectStorageRepository(self, repoId: str, repoFormat: str, connectionParameters: dict,
                                 options: dict | None = None) -> dict:
        opts = ImageOptions.parse(options_of(options))
        repo = self._engine.connect(repoId, require_str("repoFormat", repoFormat), _params(connectionParameters))
        if opts.autoFix:
            self._engine.recover_intents(repo)
        return {"repoUuid": repo.uuid}

    @verb(mutating=True)
    def disconnectStorageRepository(self, repoId: str, options: dict | None = None) -> dict:
        opts = ImageOptions.parse(options_of(options))
        self._engine.disconnect(repoId, force=opts.force)
        return {}

    @verb(mutating=True)
    def extendStorageRepository(self, repoId: str, devices: list, options: dict | None = None) -> dict:
        """Add devices to a block-1 repository's volume group: {freeBytes, totalBytes} after."""
        options_of(options)
        return self._engine.extend_repository(repoId, devices)

    @verb()
    def getStorageRepositoryList(self, options: dict | None = None) -> dict:
        options_of(options)
        return {"repos": answers.repository_list(self._engine)}

    @verb()
    def checkStorageRepository(self, repoId: str, options: dict | None = None) -> dict:
        opts = ImageOptions.parse(options_of(options))
        if not opts.paged:
            return {"fixes": self._engine.check(repoId)}
        fixes, after = check.check_page(self._engine.repository(repoId), self._engine.fixes,
                                        opts.limit or MAX_PAGE, opts.marker or "")
        return {"fixes": fixes, **({"marker": after} if after else {})}

    @verb(mutating=True)
    def fixStorageRepository(self, repoId: str, fix: str, options: dict | None = None) -> dict:
        opts = ImageOptions.parse(options_of(options))
        return {"taskId": self._engine.fix(repoId, fix, opts)}
