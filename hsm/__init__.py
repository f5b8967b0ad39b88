"""hsm: the Host Storage Manager, the storage half of VDSM as a service."""

__version__ = "0.1.0"
