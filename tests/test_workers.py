"""Worker pools: chunks come back in order, and what they share reaches each worker once, never pickled under fork."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from pixclust.workers import map_chunks, map_chunks_sharing


def _look_up(shared: dict, chunk: list[int], offset: int) -> list[tuple[int, int]]:
    return [(shared["values"][index] + offset, os.getpid()) for index in chunk]


def _doubled(chunk: list[int], offset: int) -> list[int]:
    return [2 * value + offset for value in chunk]


def test_chunks_come_back_in_order_with_their_arguments() -> None:
    chunks = [[1, 2], [3], [4, 5, 6], [7]]
    assert list(map_chunks(_doubled, chunks, 100)) == [[102, 104], [106], [108, 110, 112], [114]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork on Linux only")
def test_what_chunks_share_reaches_forked_workers_without_a_copy() -> None:
    # A lock cannot be pickled: had the shared dict been sent with each chunk, or to each worker, this would fail.
    shared = {"values": [10, 20, 30], "lock": threading.Lock()}
    chunks = [[0], [1, 2], [2], [0, 1]] * 4
    found = list(map_chunks_sharing(_look_up, shared, chunks, 5))
    assert [[value for value, _ in result] for result in found] == [
        [shared["values"][index] + 5 for index in chunk] for chunk in chunks
    ]
    if (os.cpu_count() or 1) > 1:
        assert {pid for result in found for _, pid in result} - {os.getpid()}, "no chunk ran in a worker"
