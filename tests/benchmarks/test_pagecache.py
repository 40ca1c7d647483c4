"""benchmarks/pagecache.py: dropping files from the page cache changes nothing in them."""

from benchmarks import pagecache


def test_evict_counts_the_bytes_and_keeps_the_contents(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"x" * 5000)
    (tmp_path / "d" / "b.json").write_text("{}")
    (tmp_path / "c.bin").write_bytes(b"y" * 10)
    got = pagecache.evict([tmp_path / "d", tmp_path / "c.bin"])
    assert got == (5012 if pagecache.SUPPORTED else 0)
    assert (tmp_path / "d" / "a.bin").read_bytes() == b"x" * 5000
