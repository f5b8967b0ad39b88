"""Managed storage connections: CIDs over physical connections (NFS, POSIX mounts, iSCSI, local paths)."""
