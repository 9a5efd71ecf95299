"""The process-wide choices every purgeproxy command makes (purgeproxy.runtime)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from purgeproxy import runtime
from purgeproxy.cli import main


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_young_collections_are_spaced_and_the_older_ratios_kept(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(700, 11, 12)
    runtime.tune_gc()
    assert gc.get_threshold() == (runtime.YOUNG_COLLECTION_EVERY, 11, 12)


def test_every_command_runs_with_them(thresholds: tuple[int, int, int], capsys: pytest.CaptureFixture[str]) -> None:
    gc.set_threshold(700, 10, 10)
    assert main(["--version"]) == 0
    assert gc.get_threshold()[0] == runtime.YOUNG_COLLECTION_EVERY
    assert "purgeproxy" in capsys.readouterr().out


def test_the_event_loop_is_uvloop_where_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = runtime.event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
