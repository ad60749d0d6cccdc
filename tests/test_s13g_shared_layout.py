"""A shared budget's record is read only by processes that lay its numbers out alike, with no version to bump by hand:
the record's stamp is derived from the names of its numbers in order (`AdmissionController.shared_layout`). Before,
a hand-set VERSION and the count decided, so a layout changed at the same count (numbers renamed or moved) was read
as the old one unless someone remembered the bump: each process took the other's numbers for its own."""

from __future__ import annotations

import pytest

from textbookgen.ratelimit import AdmissionController
from textbookgen.sharedlimits import SharedRecord


def _written(tmp_path) -> None:
    """A process of this layout writes the host's record (a header-less 429: a pause and a learned rate in it)."""
    writer = AdmissionController(None, 8, slow_start=False,
                                 shared=SharedRecord.open("k", AdmissionController.SHARED_SIZE, tmp_path))
    ticket = writer._admit(1, 1)
    writer.fail(ticket, rate_limited=True, retry_after=30.0)


def _read(tmp_path) -> list[float | None] | None:
    """What a process laid out as AdmissionController is now reads of the record (None: foreign, it runs alone)."""
    record = SharedRecord.open("k", AdmissionController.SHARED_SIZE, tmp_path)
    AdmissionController(None, 8, shared=record)
    read = []
    assert record.update(lambda values: read.append(values) or [0.0] * record.size)
    return read[0]


def test_a_process_of_the_same_layout_reads_the_record(tmp_path):
    _written(tmp_path)
    assert _read(tmp_path) is not None


@pytest.mark.parametrize("change", ["moved", "renamed"])
def test_a_layout_changed_at_the_same_count_reads_the_old_record_as_foreign(tmp_path, monkeypatch, change):
    _written(tmp_path)
    fields = AdmissionController._SHARED
    if change == "moved":  # the same numbers in another order: each would be read as another
        monkeypatch.setattr(AdmissionController, "_SHARED", fields[::-1])
    else:  # one number gives way to another of a new meaning
        monkeypatch.setattr(AdmissionController, "_SHARED", (*fields[:-1], "_renamed"))
        monkeypatch.setattr(AdmissionController, "_renamed", 0.0, raising=False)
    assert _read(tmp_path) is None
