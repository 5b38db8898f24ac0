"""Random ids from a pool of os.urandom: never repeated, across threads and forks."""

from __future__ import annotations

import base64
import os
import threading

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
