"""Random ids from a pool of os.urandom: never repeated, across threads and forks.

Run ids start with their creation time, so ids made one after another sort in order.
"""

from __future__ import annotations

import base64
import os
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core._ids import random_bytes, token_hex, token_urlsafe
from nexus_core.workflows.runtime import new_run_id


@given(st.integers(min_value=0, max_value=2048))
def test_lengths_and_alphabets(n: int) -> None:
    assert len(random_bytes(n)) == n
    assert len(token_hex(n)) == 2 * n
    assert len(base64.urlsafe_b64decode(token_urlsafe(n) + "==")) == n


def test_no_id_repeats_across_threads() -> None:
    made: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        out.extend(new_run_id() for _ in range(5000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [each for out in made for each in out]
    assert len(set(ids)) == len(ids) == 40_000
    assert all(each[0].isalnum() for each in ids)


def test_run_ids_start_with_their_creation_time_and_sort_in_the_order_made() -> None:
    first_ms = time.time_ns() // 1_000_000
    made = [new_run_id()]
    # Across several millisecond ticks (a condition, not a sleep): the order
    # must hold from one tick to the next, not only within one.
    while int(made[-1][:12], 16) < first_ms + 3:
        made.append(new_run_id())
    last_ms = time.time_ns() // 1_000_000
    stamps = [int(each[:12], 16) for each in made]
    assert first_ms <= stamps[0] and stamps[-1] <= last_ms
    assert stamps == sorted(stamps)
    assert [each[:12] for each in made] == sorted(each[:12] for each in made)
    # The rest is 128 random bits, as before: the time makes no id guessable.
    assert {len(base64.urlsafe_b64decode(each[12:] + "==")) for each in made} == {16}
    assert len({each[12:] for each in made}) == len(made)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_share_the_parents_pool() -> None:
    token_hex(8)  # the parent's pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes, to the parent
        os.write(write, random_bytes(64))
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 64
    assert child != random_bytes(64)  # the parent's next bytes are other bytes
