"""The start journal: what a dead kernel's parent can still tell about its executions."""

from __future__ import annotations

import os

from flight_kernel.journal import SLOTS, StartJournal


def test_a_marked_execution_is_seen_by_the_other_side_of_the_file():
    kernel_side = StartJournal.create()
    parent_side = StartJournal(os.dup(kernel_side.fd))  # another process would map the same fd
    since = parent_side.count()

    kernel_side.mark("e-1")

    assert parent_side.started_since("e-1", since) is True
    assert parent_side.started_since("e-2", since) is False
    kernel_side.close()
    parent_side.close()


def test_a_mark_before_the_call_began_does_not_count():
    journal = StartJournal.create()
    journal.mark("e-1")
    since = journal.count()
    journal.mark("e-2")
    assert journal.started_since("e-1", since) is False
    assert journal.started_since("e-2", since) is True
    journal.close()


def test_a_ring_that_wrapped_since_the_call_began_answers_the_safe_way():
    journal = StartJournal.create()
    since = journal.count()
    for i in range(SLOTS + 1):
        journal.mark(f"other-{i}")
    assert journal.started_since("never-marked", since) is True
    journal.close()
