"""Reading a Wikidata JSON dump once: decompression, framing, and the compact facts of each entity.

The dump (``latest-all.json[.gz|.bz2]``) is a JSON array with one entity per line: ``[``, then
lines ``{...},``, the last entity without the comma, then ``]``. :func:`read_facts` streams it and
yields Arrow record batches of :data:`FACTS_SCHEMA`, one row per item (``Q`` id):

- ``.gz`` is inflated by ISA-L (python-isal's ``igzip``: one thread, several members), ``.bz2``
  by indexed_bzip2 (``threads`` threads, several streams), ``.json`` is read as is;
- a background thread reads the decompressed bytes :data:`PREFETCH` blocks ahead of the decoding
  (both decompressors release the GIL, so inflating goes on while a block is decoded), into a
  ring of reused buffers;
- the decompressed bytes are cut into blocks of whole lines; each block is decoded in one call by
  msgspec into structs that name only the fields kept (labels ``en``/``mul``; claims P31, P279,
  P301, P373 with their ranks; sitelinks ``enwiki``/``commonswiki``; ``lastrevid``): msgspec
  validates and skips everything else (descriptions, aliases, other claims, qualifiers,
  references) without building Python objects for it, and of an object statement value keeps
  only its ``id``;
- with ``workers`` > 0 the blocks are decoded by that many worker processes (which die with the
  parent, :mod:`hglv2.processes`), the parent only decompresses and cuts.

Nothing is silently partial: a corrupt or truncated compressed stream, a file that is not a dump
(an HTML page, another format), a first line other than ``[``, a line that is not an entity, or a
stream that ends without the closing ``]`` raise :class:`DumpError` naming the file and the byte
offset (in the decompressed JSON) where reading broke.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
from isal import igzip, isal_zlib

from hglv2.errors import InputError

#: bytes of decompressed JSON per block (a block is decoded in one call)
BLOCK_BYTES = 4 << 20
#: blocks decompressed ahead of the decoding, by a background thread
PREFETCH = 2
#: the ranks as stored (``rank`` column of a claim): deprecated < normal < preferred
RANKS = ("deprecated", "normal", "preferred")
CLAIM_PROPS = ("P31", "P279", "P301", "P373")

_CLAIM = pa.list_(pa.struct([("value", pa.string()), ("rank", pa.int8())]))
FACTS_SCHEMA = pa.schema(
    [
        ("qid", pa.int64()),
        ("lastrevid", pa.int64()),
        ("label_en", pa.string()),
        ("label_mul", pa.string()),
        ("enwiki", pa.string()),
        ("commonswiki", pa.string()),
        *[(p, _CLAIM) for p in CLAIM_PROPS],
    ]
)
_MAGIC = {".gz": (b"\x1f\x8b", "gzip"), ".bz2": (b"BZh", "bzip2")}
_NON_SPACE = re.compile(rb"[^ \t\r\n]")
_FORMAT = {".gz": "gzip", ".bz2": "bzip2"}
_AT_BYTE = re.compile(r"\(?at byte ([0-9]+)\)?|\(byte ([0-9]+)\)")


class DumpError(InputError):
    """The dump is damaged or not a dump; the message names the file and the byte offset."""


# -- what msgspec decodes of an entity line (everything else is validated and skipped) --------


class _Text(msgspec.Struct, gc=False):
    value: str


class _Labels(msgspec.Struct, gc=False):
    en: _Text | None = None
    mul: _Text | None = None


class _Link(msgspec.Struct, gc=False):
    title: str


class _Sitelinks(msgspec.Struct, gc=False):
    enwiki: _Link | None = None
    commonswiki: _Link | None = None


class _Object(msgspec.Struct, gc=False):
    id: Any = None


class _Value(msgspec.Struct, gc=False):
    # an object value is decoded as its "id" only (an entity id; None for other objects)
    value: _Object | str | int | float | bool | list[Any] | None = None


class _Snak(msgspec.Struct, gc=False):
    snaktype: str = "value"
    datavalue: _Value | None = None


class _Claim(msgspec.Struct, gc=False):
    mainsnak: _Snak
    rank: str = "normal"


class _Claims(
    msgspec.Struct, rename={"p31": "P31", "p279": "P279", "p301": "P301", "p373": "P373"}, gc=False
):
    p31: list[_Claim] = []
    p279: list[_Claim] = []
    p301: list[_Claim] = []
    p373: list[_Claim] = []


class _Entity(msgspec.Struct, gc=False):
    id: str
    labels: _Labels | list[Any] | None = None
    claims: _Claims | list[Any] | None = None
    sitelinks: _Sitelinks | list[Any] | None = None
    lastrevid: int | None = None


_BLOCK = msgspec.json.Decoder(list[_Entity])
_DOC = threading.local()  # decode_block's reused buffer
_LINE = msgspec.json.Decoder(_Entity)


# -- decompression ---------------------------------------------------------------------------


def check_dump_path(path: str) -> None:
    """The dump exists and is named like one (``.json``, ``.json.gz``, ``.json.bz2``)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such dump file")
    if not path.endswith((".json", ".json.gz", ".json.bz2")):
        raise InputError(f"{path}: a Wikidata JSON dump ends in .json, .json.gz or .json.bz2")


def open_stream(path: str, threads: int) -> Any:
    """A binary stream of the dump's JSON; the compressed format's magic bytes are checked first.
    ``threads``: bz2 decompression threads (gzip inflates on one thread: ISA-L's single-thread
    inflate costs less CPU per byte than a parallel one, which also needs the cores decoding
    uses)."""
    suffix = Path(path).suffix
    if suffix in _MAGIC:
        magic, name = _MAGIC[suffix]
        with open(path, "rb") as fh:
            head = fh.read(len(magic))
        if head != magic:
            raise DumpError(f"{path}: not a {name} file (it starts with {head!r}) at byte 0")
    try:
        if suffix == ".gz":
            return igzip.open(path, "rb")
        if suffix == ".bz2":
            import indexed_bzip2

            return indexed_bzip2.open(path, parallelization=max(1, threads))
        return open(path, "rb")  # noqa: SIM115 (closed by the caller)
    except (RuntimeError, ValueError, OSError) as exc:
        raise DumpError(f"{path}: cannot open the compressed stream ({exc}) at byte 0") from None


def decompressed_blocks(path: str, threads: int, ring: int = 1) -> Iterator[tuple[int, memoryview]]:
    """``(offset, lines)`` of the dump's JSON in blocks of whole lines (the last one may lack its
    newline); a decompression error (corrupt or truncated data, a CRC or length check that fails,
    bytes after the last member that are not a member) is a :class:`DumpError` at the offset
    reached.

    The stream's ``readinto`` fills ``ring`` buffers taken in turn (gzip's through one copy of
    each read, bz2's and plain JSON's directly): a block's view stays valid until ``ring`` more
    blocks have been read. The part of a line that a read cuts is moved to the front of the next
    buffer."""
    stream = open_stream(path, threads)
    bufs = [bytearray(BLOCK_BYTES) for _ in range(max(1, ring))]
    offset, carry, k = 0, b"", 0
    try:
        while True:
            need = len(carry) + BLOCK_BYTES
            if len(bufs[k]) < need:  # a line longer than a block
                bufs[k] = bytearray(need)
            buf = bufs[k]
            buf[: len(carry)] = carry
            view = memoryview(buf)
            try:
                got = stream.readinto(view[len(carry) : need])
            except (RuntimeError, ValueError, OSError, EOFError, isal_zlib.error) as exc:
                why = str(exc) if str(exc) and str(exc) != "std::exception" else "bad compressed data"
                raise DumpError(
                    f"{path}: corrupt or truncated {_FORMAT.get(Path(path).suffix, 'compressed')} stream "
                    f"({why}) at byte {offset + len(carry)} of the JSON"
                ) from None
            if not got:
                break
            end = len(carry) + got
            cut = buf.rfind(b"\n", 0, end) + 1
            carry = bytes(view[cut:end])
            if cut == 0:
                continue
            yield offset, view[:cut]
            offset += cut
            k = (k + 1) % len(bufs)
    finally:
        stream.close()
    if carry.strip() and not carry.strip().endswith(b"]"):
        raise DumpError(
            f"{path}: the dump ends in the middle of an entity (truncated dump) at byte {offset + len(carry)}"
        )
    if carry:
        yield offset, memoryview(carry)


def prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """The items of ``items`` in order, produced by a background thread up to ``depth`` ahead,
    so that decompression (which releases the GIL) goes on while the caller decodes; an
    exception of ``items`` is raised here after the items before it. Closing this generator
    stops the thread and closes ``items``."""
    import queue

    q: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer
            put((False, exc))
        finally:
            getattr(items, "close", lambda: None)()

    thread = threading.Thread(target=produce, name="dump-read", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if ok:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        thread.join()


# -- framing: '[' ... ']' --------------------------------------------------------------------


class Framing:
    """Checks the array's frame across blocks: ``[`` first, ``]`` last, nothing after it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.opened = False
        self.closed = False
        self.end = 0

    def body(self, offset: int, block: memoryview) -> tuple[int, memoryview]:
        """The entity lines of ``block`` (starting at ``offset``) without the frame lines."""
        start = 0
        if not self.opened:
            start = _first_non_space(block)
            if block[start : start + 1] != b"[":
                head = bytes(block[start : start + 40])
                raise DumpError(
                    f"{self.path}: not a Wikidata JSON dump (expected '[', found {head!r}) "
                    f"at byte {offset + start}"
                )
            start += 1
            self.opened = True
        if self.closed:
            if _first_non_space(block) < len(block):
                raise DumpError(f"{self.path}: data after the closing ']' at byte {offset}")
            return offset, block[:0]
        stop = len(block)
        tail = bytes(block[-64:]).rstrip()
        if tail.endswith(b"]") and tail[-2:-1] in (b"\n", b"[", b""):
            stop = len(block) - (len(block[-64:]) - len(tail)) - 1
            self.closed = True
        self.end = offset + len(block)
        return offset + start, block[start:stop]

    def finish(self) -> None:
        if not self.opened:
            raise DumpError(f"{self.path}: empty: not a Wikidata JSON dump at byte 0")
        if not self.closed:
            raise DumpError(
                f"{self.path}: the JSON array ends without its closing ']' (truncated dump) "
                f"at byte {self.end}"
            )


def _first_non_space(data: bytes | memoryview) -> int:
    """Index of the first byte of ``data`` that is not JSON whitespace (``len(data)``: none)."""
    m = _NON_SPACE.search(data)
    return len(data) if m is None else m.start()


# -- decoding a block into fact columns ------------------------------------------------------


def _decode_error(path: str, offset: int, body: bytes) -> DumpError:
    """The first line of ``body`` that is not an entity, as a :class:`DumpError`."""
    pos = 0
    for line in body.split(b"\n"):
        text = line.strip().rstrip(b",")
        if text:
            try:
                _LINE.decode(text)
            except msgspec.DecodeError as exc:
                m = _AT_BYTE.search(str(exc))
                lead = len(line) - len(line.lstrip())
                at = offset + pos + lead + (int(m.group(1) or m.group(2)) if m else 0)
                msg = _AT_BYTE.sub("", str(exc)).strip().rstrip(" -")
                return DumpError(f"{path}: a line that is not a Wikidata entity ({msg}) at byte {at}")
        pos += len(line) + 1
    return DumpError(
        f"{path}: lines not separated as in a JSON array (',' between entities) at byte {offset}"
    )


_EMPTY_LABELS, _EMPTY_LINKS, _EMPTY_CLAIMS = _Labels(), _Sitelinks(), _Claims()
_RANK = {"preferred": 2, "deprecated": 0}


def _claim_column(groups: list[list[_Claim]]) -> pa.ListArray:
    """One claim column (a list of ``{value, rank}`` per entity) from the entities' groups; the
    value is an entity id or a string, None for no value (novalue, somevalue, other types)."""
    offsets = pa.array(itertools.accumulate(map(len, groups), initial=0), pa.int32())
    flat = [c for g in groups for c in g]
    snaks = [c.mainsnak for c in flat]
    raw = [s.datavalue.value if s.snaktype == "value" and s.datavalue is not None else None for s in snaks]
    values = [v if type(v) is str else v.id if type(v) is _Object else None for v in raw]
    inner = pa.StructArray.from_arrays(
        [
            pa.array([v if type(v) is str else None for v in values], pa.string()),
            pa.array([_RANK.get(c.rank, 1) for c in flat], pa.int8()),
        ],
        names=["value", "rank"],
    )
    return pa.ListArray.from_arrays(offsets, inner, type=_CLAIM)


def _batch(ents: list[_Entity]) -> pa.RecordBatch:
    """The facts of the items among ``ents`` (properties and lexemes are left out), built by
    column: one comprehension per column rather than one Python call per entity."""
    items = [e for e in ents if e.id[:1] == "Q" and e.id[1:].isdigit()]
    labels = [e.labels if type(e.labels) is _Labels else _EMPTY_LABELS for e in items]
    links = [e.sitelinks if type(e.sitelinks) is _Sitelinks else _EMPTY_LINKS for e in items]
    claims = [e.claims if type(e.claims) is _Claims else _EMPTY_CLAIMS for e in items]
    plain = {
        "qid": [int(e.id[1:]) for e in items],
        "lastrevid": [e.lastrevid for e in items],
        "label_en": [x.en.value if x.en is not None else None for x in labels],
        "label_mul": [x.mul.value if x.mul is not None else None for x in labels],
        "enwiki": [x.enwiki.title if x.enwiki is not None else None for x in links],
        "commonswiki": [x.commonswiki.title if x.commonswiki is not None else None for x in links],
    }
    arrays = [pa.array(v, FACTS_SCHEMA.field(k).type) for k, v in plain.items()]
    arrays += [
        _claim_column([c.p31 for c in claims]),
        _claim_column([c.p279 for c in claims]),
        _claim_column([c.p301 for c in claims]),
        _claim_column([c.p373 for c in claims]),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=FACTS_SCHEMA)


def _as_array(lines: bytes | memoryview) -> memoryview | None:
    """The entity lines ``lines`` (each but the last followed by ``,``) as one JSON array, in
    this thread's reused buffer (valid until its next call); None: only whitespace."""
    doc = getattr(_DOC, "buf", None)
    if doc is None or len(doc) < len(lines) + 2:
        doc = _DOC.buf = bytearray(len(lines) + 2)
    last = len(lines)
    doc[0] = ord("[")
    doc[1 : last + 1] = lines
    while last > 0 and doc[last] in b" \t\r\n":
        last -= 1
    if last == 0:
        return None
    if doc[last] != ord(","):
        last += 1
    doc[last] = ord("]")
    return memoryview(doc)[: last + 1]


def decode_block(path: str, offset: int, body: bytes | memoryview) -> tuple[pa.RecordBatch, int]:
    """The facts of the entity lines ``body`` (at ``offset`` of the JSON) and how many lines
    were entities; a line that is not an entity is a :class:`DumpError`."""
    doc = _as_array(body)
    if doc is None:
        return _batch([]), 0
    try:
        ents = _BLOCK.decode(doc)
    except msgspec.DecodeError:
        raise _decode_error(path, offset, bytes(body)) from None
    finally:
        doc.release()
    return _batch(ents), len(ents)


def _decode_job(job: tuple[str, int, bytes]) -> tuple[pa.RecordBatch, int]:
    return decode_block(*job)


def framed_bodies(path: str, threads: int) -> Iterator[tuple[str, int, memoryview]]:
    """``(path, offset, entity lines)`` of the dump, its frame checked (:class:`Framing`); the
    blocks are decompressed :data:`PREFETCH` ahead by a background thread (:func:`prefetched`),
    and a block's view is valid until the next one is asked for."""
    frame = Framing(path)
    blocks = prefetched(decompressed_blocks(path, threads, ring=PREFETCH + 2), PREFETCH)
    for offset, block in blocks:
        start, body = frame.body(offset, block)
        if _first_non_space(body) < len(body):
            yield path, start, body
    frame.finish()


def default_parallelism(path: str) -> tuple[int, int]:
    """``(decompression threads, decoding processes)`` for the dump ``path`` on this machine. On up
    to 3 usable cores everything runs in this process (a worker's start and the copies cost more
    than they give). From 4 cores: a ``.gz`` (inflated on one thread) or ``.json`` leaves one core
    to decompression and one to this process's cutting and handing over, and the other
    ``cores - 2`` decode; a ``.bz2`` (whose decompression costs many times the decoding per byte
    and splits over threads) gets half the cores decompressing and the other half decoding."""
    from hglv2.processes import usable_cores

    cores = usable_cores()
    if cores < 4:
        return cores, 0
    if path.endswith(".bz2"):
        return cores - cores // 2, cores // 2
    return 1, cores - 2


def read_facts(
    path: str | os.PathLike[str], *, threads: int = 2, workers: int = 0
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """``(facts batch, entity lines)`` for the whole dump, in dump order (see the module doc)."""
    path = os.fspath(path)
    check_dump_path(path)
    if workers <= 0:
        for job in framed_bodies(path, threads):
            yield _decode_job(job)
        return
    yield from _pooled(framed_bodies(path, threads), workers)


def _pooled(jobs: Iterator[tuple[str, int, bytes]], workers: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """:func:`decode_block` of ``jobs`` in ``workers`` processes, results in order (at most
    ``2 * workers`` blocks in flight)."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from hglv2.processes import die_with_parent, stop_pool

    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=die_with_parent)
    pending: deque[Any] = deque()
    try:
        for job in jobs:
            path, offset, body = job
            pending.append(pool.submit(_decode_job, (path, offset, bytes(body))))
            while len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        stop_pool(pool)
