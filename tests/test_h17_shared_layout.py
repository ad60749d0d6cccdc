"""A shared budget's record is read only by processes that lay its numbers out alike: the header-less run of 429s
(`AdmissionController._SHARED`) now keeps 4 other numbers than 3b3a121's, at the same count, so a process of that
version on the same key would have read its answered-429 count as this one's send count (and the reverse)."""

from __future__ import annotations

import struct
import time
import zlib

from textbookgen.ratelimit import AdmissionController
from textbookgen.sharedlimits import MAGIC, SharedRecord


def _record(version: int, size: int) -> bytes:
    body = struct.pack("<4sHHdd", MAGIC, version, size, time.monotonic(), time.time()) + struct.pack(
        f"<{size}d", *[1.0] * size)  # the header of the hand-bumped versions
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_record_of_the_earlier_layout_is_started_afresh(tmp_path):
    record = SharedRecord.open("k", AdmissionController.SHARED_SIZE, tmp_path)
    assert record.update(lambda values: [2.0] * record.size)
    assert record._decode(record.path.read_bytes()) == [2.0] * record.size  # this layout's reads back
    assert record._decode(_record(1, record.size)) is None
