import os
import stat

import pytest

from poetgen.files import atomic_open, atomic_write_bytes


def test_atomic_write_gives_the_usual_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"data")
        with atomic_open(tmp_path / "b.txt") as f:
            f.write("春\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644
    assert (tmp_path / "b.txt").read_bytes() == "春\n".encode("utf-8")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "poems.txt"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(tmp_path) == ["poems.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and symbolic links")
def test_an_existing_file_keeps_its_permissions_and_a_link_stays_a_link(tmp_path):
    """Replacing poems.txt gave a file its umask's permissions (a private file could become
    world-readable), and replacing a symbolic link put a new file in its place: the file it
    pointed to never got the write."""
    private = tmp_path / "private.txt"
    private.write_text("old\n", encoding="utf-8")
    private.chmod(0o640)  # neither 0600 (mkstemp's) nor what a usual umask gives
    link = tmp_path / "link.txt"
    link.symlink_to(private)
    atomic_write_bytes(link, b"old\nnew\n")
    assert link.is_symlink() and private.read_bytes() == b"old\nnew\n"
    assert stat.S_IMODE(private.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.txt", "private.txt"]  # no temporary left
