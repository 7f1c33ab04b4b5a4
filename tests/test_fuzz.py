"""Bounded fuzzing of the bundle reader and the manifest parser (hypothesis).

Whatever the bytes, the reader either returns a valid manifest or raises a
BundleError; it never raises anything else and never writes outside its
destination.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle import archive
from bundle.errors import BundleError, ManifestError
from bundle.manifest import Manifest
from tests.hostile import manifest_for, manifest_member, reg

WF = b"def main():\n    return 1\n"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MANIFEST_KEYS = ["format", "entry", "mode", "args", "config", "files", "client", "created", "digest", "x"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(MANIFEST_KEYS), json_values))
def test_manifest_parser_only_raises_manifest_errors(data: dict) -> None:
    try:
        m = Manifest.from_json(data)
    except ManifestError:
        return
    assert m.entry in {f.path for f in m.files}


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["path", "size", "mode", "sha256"]), json_values), max_size=6))
def test_manifest_file_entries(fields: list) -> None:
    entry = dict(fields)
    data = {**manifest_for({"workflow.py": WF}), "files": [entry, *manifest_for({"workflow.py": WF})["files"]]}
    data.pop("digest")
    try:
        Manifest.from_json(data)
    except ManifestError:
        pass


@FUZZ
@given(st.binary(max_size=4096))
def test_reader_on_random_bytes(tmp_path_factory, raw: bytes) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("fz")
    (d / "b.tar.gz").write_bytes(raw)
    try:
        archive.extract(d / "b.tar.gz", d / "out")
    except BundleError:
        assert not (d / "out").exists()
    assert {p.name for p in d.iterdir()} <= {"b.tar.gz", "out"}


@FUZZ
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255), st.booleans())
def test_reader_on_mutated_valid_archives(tmp_path_factory, position: int, byte: int, compressed_side: bool) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("mut")
    files = {"workflow.py": WF, "data/x.txt": b"payload " * 50}
    m = manifest_for(files)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [manifest_member(m), *(reg(p, v) for p, v in sorted(files.items()))]:
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    if compressed_side:
        raw = bytearray(gzip.compress(bytes(raw), mtime=0))
        raw[position % len(raw)] = byte
        (d / "b.tar.gz").write_bytes(bytes(raw))
    else:
        raw[position % len(raw)] = byte
        (d / "b.tar.gz").write_bytes(gzip.compress(bytes(raw), mtime=0))
    try:
        got = archive.extract(d / "b.tar.gz", d / "out")
    except BundleError:
        assert not (d / "out").exists()
        return
    # accepted: then every file is exactly what the manifest promises
    for f in got.files:
        assert (d / "out" / f.path).stat().st_size == f.size
    assert json.loads(json.dumps(got.to_json()))["digest"] == got.digest
