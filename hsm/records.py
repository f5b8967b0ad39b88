"""Records read from storage: input written by other hosts or damaged, never trusted."""

from __future__ import annotations

import json


def parse_object(data: bytes) -> dict:
    """The JSON object in `data`; ValueError says why there is none."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record
