"""supervdsmd: the root helper shared by VDSM and hsmd, and its client."""
