"""What VDSM imports to reach hsmd (or run hsm's code in-process)."""
