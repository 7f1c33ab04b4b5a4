"""Size limits, in one place.

Globus Compute refuses a submission above 10 MiB and an endpoint refuses to
return a result above 10 MiB (``_RESULT_SIZE_LIMIT`` in the endpoint's
``engines/helper.py``). Both are measured after serialization, and the default
data serializer pickles and base64-encodes, so raw bytes grow by 4/3 plus the
pickle's framing. Every chunk size in gcbundle derives from ``CHUNK_BYTES``.
"""
from __future__ import annotations

import os

#: Globus Compute's limit on one task's payload and on one result.
TASK_LIMIT = 10 * 1024 * 1024

#: Room left for the envelope (function, kwargs, dict keys, pickle framing).
HEADROOM = 512 * 1024

#: Raw bytes per staged bundle chunk or result chunk: base64 of this plus
#: HEADROOM stays under TASK_LIMIT.
CHUNK_BYTES = ((TASK_LIMIT - HEADROOM) // 4) * 3 // (1024 * 1024) * (1024 * 1024)

#: A bundle whose archive is at most this large travels inside the launch task.
INLINE_BUNDLE_BYTES = CHUNK_BYTES


def chunk_count(size: int, chunk: int = CHUNK_BYTES) -> int:
    """Chunks of ``chunk`` bytes that ``size`` bytes take: ceil(size / chunk), and at least one
    (an empty upload or package is one chunk)."""
    return max(1, -(-size // chunk))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        return default


#: Largest compressed bundle accepted (client before packing finishes, login node on staging).
MAX_BUNDLE_BYTES = _env_int("GCBUNDLE_MAX_BUNDLE_BYTES", 2 * 1024**3)

#: Largest total uncompressed size of a bundle's members.
MAX_UNPACKED_BYTES = _env_int("GCBUNDLE_MAX_UNPACKED_BYTES", 8 * 1024**3)

#: Most members a bundle may have.
MAX_MEMBERS = _env_int("GCBUNDLE_MAX_MEMBERS", 50_000)

#: Longest path inside a bundle (bytes of its UTF-8 form).
MAX_PATH_BYTES = 1024

#: Largest ``gcbundle.json`` accepted.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

#: Largest log slice returned by one ``logs`` task.
LOG_SLICE_BYTES = 1024 * 1024

#: Longest single file or directory name (bytes): what common file systems allow.
MAX_NAME_BYTES = 255

#: Budget of one page of a results listing (bytes of its entries' JSON): a
#: listing of any length then fits in replies well under TASK_LIMIT.
LISTING_PAGE_BYTES = _env_int("GCBUNDLE_LISTING_PAGE_BYTES", 2 * 1024 * 1024)

#: Most runs in one ``runs`` reply.
RUNS_PAGE = 500
