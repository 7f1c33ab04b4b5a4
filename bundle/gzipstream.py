"""Standard gzip, compressed on every core, with the same bytes every time.

Deflate is what a pack spends its time on (about 60 MB/s per core at level
6), and ``tar -czf`` already runs tar and gzip side by side. Like pigz, this
writer cuts the uncompressed stream into fixed-size blocks, compresses the
blocks in threads (zlib releases the GIL), and joins them into one gzip
member: each block is a raw deflate stream primed with the previous block's
last 32 KiB (so matches reach across the cut, as in a single stream) and
ended with a sync flush (byte-aligned, no final bit), the last one with a
finish. Block boundaries depend only on the data, never on timing, so the
output is deterministic for a given zlib; any gzip reader reads it.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

#: Uncompressed bytes per block. Part of the output's identity: changing it
#: changes the archive bytes (not the digest), so it is fixed.
BLOCK = 1024 * 1024
#: Deflate's window: how much of the previous block primes the next.
WINDOW = 32 * 1024


def workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _deflate(data: bytes, prime: bytes, level: int, last: bool) -> bytes:
    dictionary = (prime,) if prime else ()
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY, *dictionary)
    return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class ParallelGzipWriter(io.RawIOBase):
    """A write-only file object that writes one gzip member (mtime 0, no name) to ``raw``."""

    def __init__(self, raw: BinaryIO, level: int = 6, threads: int | None = None) -> None:
        self.raw = raw
        self.level = level
        self.crc = 0
        self.size = 0
        self.buf = bytearray()
        self.prime = b""
        n = threads or workers()
        self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="gcbundle-gzip") if n > 1 else None
        self.pending: deque[Future[bytes] | bytes] = deque()
        self.depth = 2 * n
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        raw.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([xfl, 255]))
        self._closed = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """Uncompressed bytes written so far (what tarfile asks for)."""
        return self.size

    def write(self, b: Any) -> int:  # type: ignore[override]
        data = memoryview(b).cast("B")
        n = len(data)
        self.crc = zlib.crc32(data, self.crc)
        self.size += n
        self.buf += data
        while len(self.buf) >= BLOCK:
            block = bytes(self.buf[:BLOCK])
            del self.buf[:BLOCK]
            self._submit(block, last=False)
        return n

    def _submit(self, block: bytes, last: bool) -> None:
        prime, self.prime = self.prime, block[-WINDOW:]
        if self.pool is None:
            self.pending.append(_deflate(block, prime, self.level, last))
        else:
            self.pending.append(self.pool.submit(_deflate, block, prime, self.level, last))
        while len(self.pending) > self.depth:
            self._drain_one()

    def _drain_one(self) -> None:
        item = self.pending.popleft()
        self.raw.write(item if isinstance(item, bytes) else item.result())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(bytes(self.buf), last=True)
            self.buf = bytearray()
            while self.pending:
                self._drain_one()
            self.raw.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            super().close()

    def abort(self) -> None:
        """Stop without writing the rest (the caller discards the output)."""
        self._closed = True
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        super().close()

    def __enter__(self) -> ParallelGzipWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
