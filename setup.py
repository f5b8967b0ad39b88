from setuptools import find_packages, setup

setup(
    name="hsm",
    version="0.1.0",
    description="Host Storage Manager: VDSM's storage as a standalone service",
    python_requires=">=3.11",
    packages=find_packages(include=["hsm", "hsm.*", "supervdsm", "supervdsm.*", "vdsm_shim", "vdsm_shim.*"]),
    install_requires=["prometheus_client", "pyudev", "inotify_simple"],
    entry_points={"console_scripts": [
        "hsmd = hsm.daemon:main",
        "hsm-cli = hsm.cli:main",
        "supervdsmd = supervdsm.daemon:main",
    ]},
)
