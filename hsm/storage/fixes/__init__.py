"""The fixes that complete image operations: hsm.storage.fixes.manager starts them, one module per kind."""

from hsm.storage.fixes.manager import FIX_TYPES, KINDS, PREFIX, Fixes

__all__ = ["FIX_TYPES", "KINDS", "PREFIX", "Fixes"]
