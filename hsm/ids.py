"""The one rule for ids that hsm makes into file names (images, volumes, repositories, tasks)."""

from __future__ import annotations

import re

# Letters, digits, '-' and '_' only: never '/', '.' or '..', so an id is always one plain file name.
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID.match(value) is not None
