"""The one atomic-write helper: complete file or nothing, no temporary left behind."""

import pytest

from neurofm.atomic import atomic_output, atomic_write


def test_atomic_write_text_bytes_and_function(tmp_path):
    p = tmp_path / "sub" / "a.json"  # the folder is created
    assert atomic_write(p, "one") == p and p.read_text() == "one"
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    atomic_write(p, lambda tmp: tmp.write_text("three"))
    assert p.read_text() == "three"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]
