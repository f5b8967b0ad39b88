"""The repository's file operations never act through a symbolic link someone planted."""

import os
import threading

import pytest

from hsm.atomicfile import atomic_write
from hsm.storage.ioprocess import IOProcess


@pytest.fixture
def io():
    helper = IOProcess("links", timeout=10)
    yield helper
    helper.close()


def test_records_are_not_read_through_a_link(io, tmp_path):
    (tmp_path / "secret").write_text("root only")
    os.symlink(tmp_path / "secret", tmp_path / "record.json")
    with pytest.raises(OSError):
        io.read(str(tmp_path / "record.json"))


def test_a_link_planted_as_the_temporary_file_is_not_written_through(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep")
    tmp = tmp_path / f".record.json.{threading.get_native_id()}.tmp"
    os.symlink(target, tmp)
    atomic_write(str(tmp_path / "record.json"), b"new")
    assert target.read_text() == "keep"
    assert (tmp_path / "record.json").read_bytes() == b"new" and not (tmp_path / "record.json").is_symlink()


def test_a_folder_is_emptied_only_where_it_is(io, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    os.symlink(victim, tmp_path / "images")
    with pytest.raises(OSError):
        io.empty_folder(str(tmp_path / "images"))
    with pytest.raises(OSError):
        io.is_folder(str(tmp_path / "images"))
    assert (victim / "precious").read_text() == "keep"
    real = tmp_path / "volumes"
    real.mkdir()
    (real / "a.qcow2").write_text("x")
    assert io.empty_folder(str(real)) == 1 and os.listdir(real) == []
