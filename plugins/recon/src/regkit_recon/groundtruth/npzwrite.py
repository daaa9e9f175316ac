"""A fast ``.npz`` writer for arrays that are mostly one repeated value.

Why: a ground-truth sample holds large float32 arrays (``front``/``back``, 15 MB each) that are
over 90 % NaN and bool/uint8 arrays that are mostly 0. ``zipfile`` with zlib, even at level 1,
scans its input at only ~300-450 MB/s, constant runs included, so most of the time spent writing a
sample goes into re-discovering, byte by byte, that NaN follows NaN.

Method: each array's raw C-order bytes are split into maximal runs of one repeated element (found
with one vectorised comparison of neighbouring elements, viewed as unsigned integers of the element
size) and the data between them. Runs of at least ``min_run_bytes`` are not given to zlib: a run of
N elements is the concatenation of precomputed raw-DEFLATE segments, one per power of two in N's
binary decomposition, taken from a per-process cache (bounded, LRU on the element pattern). Built
once, the pieces are compressed at level 9 (~1000:1 on a constant run; stored when ``level`` is 0).
The few elements below the smallest cached piece (under 4 KiB) join the next zlib segment.
Everything else (the ``.npy`` header and the data between long runs) is compressed by a fresh
``zlib.compressobj(level, DEFLATED, -15)`` per segment. Every segment, cached or not, ends with
``Z_FULL_FLUSH``: it is byte-aligned, has no final-block bit and refers to nothing outside itself,
so any concatenation of segments is a valid DEFLATE stream; the member ends with one empty final
block. The CRC-32 of a cached piece is cached too and joined to the running CRC with
:func:`crc32_combine` (zlib's GF(2) operator method), so the bytes of a run are never scanned.

Guarantees: the result is a ZIP archive with one DEFLATE member ``KEY.npy`` per array and
standard ``.npy`` v1.0 headers (v2.0 when the header does not fit), read by plain
:func:`numpy.load`; the CRC-32 and sizes are exact (``zipfile`` checks the CRC on read); the bytes
depend only on the arrays, ``level`` and ``min_run_bytes`` (fixed 1980-01-01 timestamps), so the
same input gives the same file. Members and archives over 4 GiB get ZIP64 extra fields and end
records. The file is written atomically (:func:`regkit.utils.files.atomic_path`). Non-C-ordered
arrays are stored in C order; object arrays are refused (``allow_pickle`` is never needed).
"""

from __future__ import annotations

import collections
import io
import os
import struct
import threading
import zlib
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from regkit.utils.files import atomic_path

__all__ = ["crc32_combine", "write_npz"]

_ZIP64_LIMIT = 0xFFFFFFFF
"""Sizes and offsets at or above this go into ZIP64 extra fields (a variable for the tests)."""

_DOS_DATE = (1 << 5) | 1  # 1980-01-01
_DOS_TIME = 0  # 00:00:00
_DIRECT_PIECE_BYTES = 1 << 20
"""Cached pieces up to this size are compressed; larger ones are two copies of the half piece."""
_MIN_PIECE_BYTES = 4096
"""The smallest cached piece (at most; less when ``min_run_bytes`` is smaller)."""
_CACHE_PATTERNS = 64
_PIECE_LEVEL = 9
"""Cached pieces are built once per process, so at the best level: ~1000:1 on a constant run,
where level 1 gives ~200:1."""
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


# -- CRC-32 combination ------------------------------------------------------------------------

_CRC_POLY = 0xEDB88320  # CRC-32 (ISO-HDLC), bit-reflected
_crc_ops: list[list[int]] = []  # _crc_ops[j]: the 32 columns of "append 2**j zero bytes"
_crc_tables: list[list[int]] = []  # the same operators as 4 x 256 byte-lookup tables
_crc_lock = threading.Lock()


def _gf2_times(columns: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= columns[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(columns: list[int]) -> list[int]:
    return [_gf2_times(columns, c) for c in columns]


def _byte_tables(columns: list[int]) -> list[int]:
    """``table[256 p + b]``: the operator applied to byte value ``b`` at byte ``p`` of the CRC."""
    table = [0] * 1024
    for p in range(4):
        base = 256 * p
        for b in range(1, 256):
            low = b & -b
            table[base + b] = table[base + (b ^ low)] ^ columns[8 * p + low.bit_length() - 1]
    return table


def _crc_table(j: int) -> list[int]:
    """The operator that advances a CRC-32 register over ``2**j`` zero bytes, as byte tables."""
    if j < len(_crc_tables):
        return _crc_tables[j]
    with _crc_lock:
        if not _crc_ops:
            op = [_CRC_POLY] + [1 << (n - 1) for n in range(1, 32)]  # one zero bit
            for _ in range(3):
                op = _gf2_square(op)  # 2, 4, 8 bits
            _crc_ops.append(op)
        while len(_crc_ops) <= j:
            _crc_ops.append(_gf2_square(_crc_ops[-1]))
        while len(_crc_tables) <= j:
            _crc_tables.append(_byte_tables(_crc_ops[len(_crc_tables)]))
        return _crc_tables[j]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc1 = crc32(A)``, ``crc2 = crc32(B)`` and ``len(B)``.

    zlib's method: ``crc(A + B) = shift(crc(A), len(B)) ^ crc(B)``, where ``shift`` multiplies by
    ``x^(8 len(B))`` modulo the CRC-32 polynomial, applied as one cached 32-column GF(2) operator
    per set bit of ``len(B)`` (built on first use, kept as byte-lookup tables).

    Args:
        crc1: ``zlib.crc32(A)``.
        crc2: ``zlib.crc32(B)``.
        len2: ``len(B)`` in bytes (>= 0).

    Returns:
        ``zlib.crc32(A + B)``.
    """
    if len2 < 0:
        raise ValueError(f"len2 must be >= 0, got {len2}")
    crc = crc1 & 0xFFFFFFFF
    j = 0
    while len2:
        if len2 & 1:
            t = _crc_table(j)
            crc = (t[crc & 0xFF] ^ t[256 + (crc >> 8 & 0xFF)] ^ t[512 + (crc >> 16 & 0xFF)]
                   ^ t[768 + (crc >> 24)])
        len2 >>= 1
        j += 1
    return crc ^ (crc2 & 0xFFFFFFFF)


# -- Cached run segments -----------------------------------------------------------------------


class _RunPieces:
    """Raw-DEFLATE segments and CRCs of ``2**k`` copies of one element, for growing ``k``."""

    def __init__(self, pattern: bytes, level: int) -> None:
        self.pattern = pattern
        self.level = level
        self.segments: list[bytes] = []
        self.crcs: list[int] = []
        self.lock = threading.Lock()

    def upto(self, k: int) -> tuple[list[bytes], list[int]]:
        """The segments and CRCs for ``2**0 .. 2**k`` elements (built on first use)."""
        with self.lock:
            while len(self.segments) <= k:
                i = len(self.segments)
                nbytes = len(self.pattern) << i
                if nbytes <= _DIRECT_PIECE_BYTES:
                    data = self.pattern * (1 << i)
                    comp = zlib.compressobj(self.level, zlib.DEFLATED, -15)
                    segment = comp.compress(data) + comp.flush(zlib.Z_FULL_FLUSH)
                    crc = zlib.crc32(data)
                else:  # two self-contained halves: same ratio, half the cost to build
                    segment = self.segments[i - 1] * 2
                    crc = crc32_combine(self.crcs[i - 1], self.crcs[i - 1], nbytes // 2)
                self.segments.append(segment)
                self.crcs.append(crc)
            return self.segments, self.crcs


_pieces: collections.OrderedDict[tuple[bytes, int], _RunPieces] = collections.OrderedDict()
_pieces_lock = threading.Lock()


def _run_pieces(pattern: bytes, level: int) -> _RunPieces:
    key = (pattern, level)
    with _pieces_lock:
        entry = _pieces.get(key)
        if entry is None:
            entry = _pieces[key] = _RunPieces(pattern, level)
            while len(_pieces) > _CACHE_PATTERNS:
                _pieces.popitem(last=False)
        else:
            _pieces.move_to_end(key)
        return entry


# -- One member --------------------------------------------------------------------------------


def _npy_header(arr: np.ndarray) -> bytes:
    """The ``.npy`` header ``np.save`` writes for ``arr`` stored in C order (v1.0 when it fits)."""
    d = np.lib.format.header_data_from_array_1_0(arr)
    d["fortran_order"] = False
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # header over 64 KiB: only the 2.0 format has room
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _long_runs(raw: np.ndarray, itemsize: int, min_run_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths (in elements) of the maximal runs of one element of >= min_run_bytes."""
    none = np.zeros(0, dtype=np.int64)
    uint = _UINT.get(itemsize)
    if uint is None or raw.size == 0:
        return none, none
    n = raw.size // itemsize
    least = max(-(-min_run_bytes // itemsize), 2)
    if n < least:
        return none, none
    u = raw.view(uint)
    change = np.flatnonzero(u[1:] != u[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [n])))
    keep = lengths >= least
    return starts[keep], lengths[keep]


def _compress_member(arr: np.ndarray, level: int, min_run_bytes: int,
                     final_block: bytes) -> tuple[list[bytes], int, int]:
    """The raw-DEFLATE chunks of one ``.npy`` member, its CRC-32 and its uncompressed size."""
    header = _npy_header(arr)
    flat = np.ascontiguousarray(arr).reshape(-1)
    raw = flat.view(np.uint8)
    itemsize = arr.dtype.itemsize
    data = raw.data
    chunks: list[bytes] = []
    comp: Any = zlib.compressobj(level, zlib.DEFLATED, -15)
    chunks.append(comp.compress(header))
    crc = zlib.crc32(header)

    piece_elems = 1
    while piece_elems * 2 * max(itemsize, 1) <= min(_MIN_PIECE_BYTES, min_run_bytes):
        piece_elems *= 2
    k_min = piece_elems.bit_length() - 1
    piece_level = _PIECE_LEVEL if level else 0  # level 0 asks for stored blocks throughout

    pos = 0  # in elements
    starts, lengths = _long_runs(raw, itemsize, min_run_bytes)
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        if start > pos:
            if comp is None:
                comp = zlib.compressobj(level, zlib.DEFLATED, -15)
            gap = data[pos * itemsize:start * itemsize]
            chunks.append(comp.compress(gap))
            crc = zlib.crc32(gap, crc)
        if comp is not None:
            chunks.append(comp.flush(zlib.Z_FULL_FLUSH))
            comp = None
        cached = length & ~(piece_elems - 1)
        pattern = bytes(data[start * itemsize:(start + 1) * itemsize])
        segments, crcs = _run_pieces(pattern, piece_level).upto(cached.bit_length() - 1)
        for k in range(k_min, cached.bit_length()):
            if cached >> k & 1:
                chunks.append(segments[k])
                crc = crc32_combine(crc, crcs[k], itemsize << k)
        pos = start + cached  # the remainder (< piece_elems) joins the next zlib segment
    if raw.size > pos * itemsize:
        if comp is None:
            comp = zlib.compressobj(level, zlib.DEFLATED, -15)
        tail = data[pos * itemsize:]
        chunks.append(comp.compress(tail))
        crc = zlib.crc32(tail, crc)
    if comp is not None:
        chunks.append(comp.flush(zlib.Z_FULL_FLUSH))
    chunks.append(final_block)
    return chunks, crc, len(header) + raw.size


# -- ZIP container -----------------------------------------------------------------------------


def _zip64_extra(values: list[int]) -> bytes:
    return struct.pack(f"<HH{len(values)}Q", 0x0001, 8 * len(values), *values)


def _local_header(name: bytes, flags: int, crc: int, csize: int, usize: int) -> bytes:
    if csize >= _ZIP64_LIMIT or usize >= _ZIP64_LIMIT:
        extra = _zip64_extra([usize, csize])
        version, csize, usize = 45, 0xFFFFFFFF, 0xFFFFFFFF
    else:
        extra, version = b"", 20
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, version, flags, 8, _DOS_TIME, _DOS_DATE,
                       crc, csize, usize, len(name), len(extra)) + name + extra


def _central_header(name: bytes, flags: int, crc: int, csize: int, usize: int,
                    offset: int) -> bytes:
    wide: list[int] = []
    if usize >= _ZIP64_LIMIT:
        wide.append(usize)
        usize = 0xFFFFFFFF
    if csize >= _ZIP64_LIMIT:
        wide.append(csize)
        csize = 0xFFFFFFFF
    if offset >= _ZIP64_LIMIT:
        wide.append(offset)
        offset = 0xFFFFFFFF
    extra = _zip64_extra(wide) if wide else b""
    version = 45 if wide else 20
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, version, version, flags, 8, _DOS_TIME,
                       _DOS_DATE, crc, csize, usize, len(name), len(extra), 0, 0, 0, 0,
                       offset) + name + extra


def _end_records(count: int, cd_offset: int, cd_size: int) -> bytes:
    out = b""
    if count >= 0xFFFF or cd_offset >= _ZIP64_LIMIT or cd_size >= _ZIP64_LIMIT:
        zip64_end = cd_offset + cd_size
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size,
                           cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, zip64_end, 1)
        count = min(count, 0xFFFF)
        cd_offset = min(cd_offset, 0xFFFFFFFF)
        cd_size = min(cd_size, 0xFFFFFFFF)
    return out + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, cd_size, cd_offset, 0)


def _write_archive(fh: BinaryIO, arrays: Mapping[str, Any], level: int,
                   min_run_bytes: int) -> None:
    final = zlib.compressobj(level, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    central: list[bytes] = []
    offset = 0
    for key, value in arrays.items():
        if not isinstance(key, str):
            raise ValueError(f"array names must be str, got {key!r}")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(f"array {key!r} has dtype {arr.dtype} (object arrays need pickle, "
                             "which .npz files written here never use)")
        name = f"{key}.npy".encode()
        flags = 0 if name.isascii() else 0x0800  # bit 11: the name is UTF-8
        chunks, crc, usize = _compress_member(arr, level, min_run_bytes, final)
        csize = sum(len(c) for c in chunks)
        local = _local_header(name, flags, crc, csize, usize)
        fh.write(local)
        for chunk in chunks:
            fh.write(chunk)
        central.append(_central_header(name, flags, crc, csize, usize, offset))
        offset += len(local) + csize
    directory = b"".join(central)
    fh.write(directory)
    fh.write(_end_records(len(central), offset, len(directory)))


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, Any], *, level: int = 1,
              min_run_bytes: int = 16384) -> None:
    """Write ``arrays`` to a ``.npz`` file at ``path``, fast for arrays that are mostly runs.

    The file is what ``np.savez_compressed`` would hold (member ``KEY.npy`` per array, DEFLATE,
    ``.npy`` headers from :mod:`numpy.lib.format`), except that arrays are always stored in C
    order; see the module docstring for the method. The arrays are not modified. Members and
    archives over 4 GiB get ZIP64 records. The write is atomic: on any error nothing is left at
    ``path`` (an existing file stays as it was) and no temporary file remains.

    Args:
        path: The output file.
        arrays: Name -> array (anything :func:`numpy.asarray` takes; no object arrays).
        level: zlib compression level, 0-9.
        min_run_bytes: Runs of one repeated element at least this long (bytes) are emitted from
            precomputed segments instead of being compressed.

    Raises:
        ValueError: an object array, a non-str name, or a bad ``level``/``min_run_bytes``.
    """
    if not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"level must be an int in 0..9, got {level!r}")
    if not isinstance(min_run_bytes, int) or min_run_bytes < 1:
        raise ValueError(f"min_run_bytes must be an int >= 1, got {min_run_bytes!r}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        _write_archive(fh, arrays, level, min_run_bytes)
