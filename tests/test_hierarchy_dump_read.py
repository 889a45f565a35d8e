"""Reading the dump: blocks of whole lines from reused buffers, decompression ahead in a thread,
statement values of every JSON type."""

from __future__ import annotations

import gzip
import json
import threading

import pytest

from hglv2.hierarchy import dump_read


def _lines(n: int, long_every: int = 7) -> bytes:
    """A dump's JSON with ``n`` entity lines, some far longer than a block."""
    ents = [
        {
            "type": "item",
            "id": f"Q{k}",
            "labels": {"en": {"language": "en", "value": "x" * (5000 if k % long_every == 0 else 20)}},
        }
        for k in range(1, n + 1)
    ]
    return ("[\n" + ",\n".join(json.dumps(e, separators=(",", ":")) for e in ents) + "\n]\n").encode()


@pytest.mark.parametrize("ring", [1, 3])
def test_blocks_are_whole_lines_of_the_json(tmp_path, monkeypatch, ring):
    monkeypatch.setattr(dump_read, "BLOCK_BYTES", 1000)
    data = _lines(60)
    path = tmp_path / "d.json.gz"
    path.write_bytes(gzip.compress(data))
    seen, offsets = [], []
    for offset, block in dump_read.decompressed_blocks(str(path), 1, ring=ring):
        offsets.append(offset)
        seen.append(bytes(block))  # copied before the buffer is reused
        assert bytes(block).endswith(b"\n") or offset + len(block) == len(data)
    assert b"".join(seen) == data
    assert offsets == [sum(map(len, seen[:k])) for k in range(len(seen))]


def test_views_stay_valid_for_the_ring(tmp_path, monkeypatch):
    monkeypatch.setattr(dump_read, "BLOCK_BYTES", 1000)
    data = _lines(40, long_every=1000)
    path = tmp_path / "d.json"
    path.write_bytes(data)
    views = []
    for _, block in dump_read.decompressed_blocks(str(path), 1, ring=4):
        views.append((block, bytes(block)))
        if len(views) > 4:
            views.pop(0)
        assert all(bytes(v) == copy for v, copy in views[-4:])


def _members(data: bytes, n: int) -> bytes:
    """``data`` as ``n`` concatenated gzip members, as the dump is written."""
    step = -(-len(data) // n)
    return b"".join(gzip.compress(data[k : k + step]) for k in range(0, len(data), step))


def test_gzip_members_and_their_trailers(tmp_path, monkeypatch):
    monkeypatch.setattr(dump_read, "BLOCK_BYTES", 1000)
    data = _lines(60)
    gz = _members(data, 4)
    path = tmp_path / "d.json.gz"
    path.write_bytes(gz + b"\0" * 8)  # zero padding after the last member is allowed, as by gzip
    assert b"".join(bytes(b) for _, b in dump_read.decompressed_blocks(str(path), 1)) == data
    crc, size = bytearray(gz), bytearray(gz)
    crc[-6] ^= 0x55  # the last member's CRC-32
    size[-2] ^= 0x55  # its length
    for damaged in (bytes(crc), bytes(size), gz + b"not gzip", gz[:-3]):
        path.write_bytes(damaged)
        with pytest.raises(
            dump_read.DumpError, match=r"corrupt or truncated gzip stream .* at byte [0-9]+ of"
        ):
            for _ in dump_read.decompressed_blocks(str(path), 1):
                pass


def test_default_parallelism(monkeypatch):
    for cores, gz, bz2 in [
        (1, (1, 0), (1, 0)),
        (2, (2, 0), (2, 0)),
        (4, (1, 2), (2, 2)),
        (16, (1, 14), (8, 8)),
    ]:
        monkeypatch.setattr(dump_read.os, "sched_getaffinity", lambda _, c=cores: set(range(c)))
        assert dump_read.default_parallelism("d.json.gz") == gz
        assert dump_read.default_parallelism("d.json") == gz
        assert dump_read.default_parallelism("d.json.bz2") == bz2


def test_prefetched_order_errors_and_early_close():
    assert list(dump_read.prefetched(iter(range(50)), 2)) == list(range(50))

    def failing():
        yield from range(3)
        raise dump_read.DumpError("x: broken at byte 3")

    got = []
    with pytest.raises(dump_read.DumpError, match="at byte 3"):
        for item in dump_read.prefetched(failing(), 2):
            got.append(item)
    assert got == [0, 1, 2]

    closed = threading.Event()

    def endless():
        try:
            k = 0
            while True:
                yield k
                k += 1
        finally:
            closed.set()

    gen = dump_read.prefetched(endless(), 2)
    assert [next(gen) for _ in range(5)] == list(range(5))
    gen.close()
    assert closed.is_set()
    assert not any(t.name == "dump-read" and t.is_alive() for t in threading.enumerate())


def _statement(value) -> dict:
    return {
        "mainsnak": {"snaktype": "value", "property": "P31", "datavalue": {"value": value, "type": "x"}},
        "type": "statement",
        "rank": "normal",
    }


def test_statement_values_of_every_json_type():
    """An entity id or a string is kept; any other value (a time or quantity object, a number,
    a list, true, null) is no value, as is a novalue snak."""
    values = [
        {"entity-type": "item", "numeric-id": 5, "id": "Q5"},
        "Foo",
        {"time": "+2001-01-01T00:00:00Z", "precision": 11},
        {"id": 7},
        12,
        1.5,
        [1, "a"],
        True,
        None,
    ]
    claims = [_statement(v) for v in values] + [{"mainsnak": {"snaktype": "novalue"}, "rank": "preferred"}]
    line = json.dumps({"type": "item", "id": "Q1", "claims": {"P31": claims}}, separators=(",", ":"))
    batch, n = dump_read.decode_block("d.json", 0, memoryview(line.encode() + b",\n"))
    assert n == 1
    got = batch.column("P31").to_pylist()[0]
    assert [c["value"] for c in got] == ["Q5", "Foo", None, None, None, None, None, None, None, None]
    assert [c["rank"] for c in got] == [1] * 9 + [2]
