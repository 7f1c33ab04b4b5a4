"""The parallel gzip writer: standard gzip, and the same bytes whatever the thread count."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bundle.gzipstream import BLOCK, ParallelGzipWriter


def _compress(data: bytes, threads: int, piece: int = 10_000) -> bytes:
    out = io.BytesIO()
    with ParallelGzipWriter(out, 6, threads) as gz:
        for i in range(0, len(data), piece):
            gz.write(data[i:i + piece])
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345])
def test_round_trip_and_determinism(size: int) -> None:
    text = b"".join(b"line %d of some text\n" % i for i in range(size // 20 + 1))
    data = (os.urandom(size // 2) + text)[:size]
    one, two, four = _compress(data, 1), _compress(data, 2, piece=7777), _compress(data, 4)
    assert one == two == four
    assert gzip.decompress(one) == data
    assert one[:4] == b"\x1f\x8b\x08\x00" and one[4:8] == b"\0\0\0\0"


def test_matches_across_blocks_compress_like_one_stream() -> None:
    """Each block is primed with the previous one's tail: a repeated text
    compresses about as well as with gzip in one stream."""
    data = os.urandom(20_000) * (3 * BLOCK // 20_000)
    ours, single = len(_compress(data, 2)), len(gzip.compress(data, 6))
    assert ours < single * 1.05


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip command")
def test_the_gzip_command_accepts_it(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(_compress(os.urandom(BLOCK) + b"a" * BLOCK, 2))
    subprocess.run(["gzip", "-t", str(path)], check=True, timeout=60)
