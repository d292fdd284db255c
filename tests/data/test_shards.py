import pytest

from vlscale.data import shards
from vlscale.errors import UserError


def test_brace_ranges_keep_padding_and_order():
    assert shards.expand_braces("s/{00008..00011}.tar") == [f"s/{i:05d}.tar" for i in range(8, 12)]
    assert shards.expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert shards.expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(UserError, match="counts down"):
        shards.expand_braces("{5..1}.tar")


def test_expand_paths_globs_dirs_and_lists(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:03d}.tar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    names = [str(tmp_path / f"{i:03d}.tar") for i in range(3)]
    assert shards.expand_shards(str(tmp_path)) == names
    assert shards.expand_shards(str(tmp_path / "*.tar")) == names
    assert shards.expand_shards(str(tmp_path / "{000..002}.tar")) == names
    assert shards.expand_shards(f"{names[2]}::{names[0]}") == [names[2], names[0]]
    assert shards.expand_shards(names[:2]) == names[:2]
    with pytest.raises(UserError, match="does not exist"):
        shards.expand_shards(str(tmp_path / "{000..004}.tar"))
    with pytest.raises(UserError, match="matches no files"):
        shards.expand_shards(str(tmp_path / "*.tgz"))


def test_host_shards_are_disjoint_and_complete():
    names = [f"{i}.tar" for i in range(10)]
    parts = [shards.host_shards(names, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(names)
    assert [len(p) for p in parts] == [4, 3, 3]
    with pytest.raises(UserError, match="cannot feed"):
        shards.host_shards(names[:2], 0, 3)
