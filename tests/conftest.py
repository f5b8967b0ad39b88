import pytest

from tests.hsmd import Hsmd


@pytest.fixture
def hsmd(tmp_path):
    """A running hsmd with its default configuration, on a free loopback port."""
    daemon = Hsmd(str(tmp_path)).start()
    yield daemon
    daemon.kill()


@pytest.fixture
def make_hsmd(tmp_path):
    """Build hsmd processes with extra config; each is killed at the end if still running."""
    made = []

    def make(name: str = "hsmd", **kwargs) -> Hsmd:
        root = tmp_path / name
        root.mkdir()
        daemon = Hsmd(str(root), **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()
