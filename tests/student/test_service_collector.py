"""The registered model pauses Python's cyclic garbage collector while it builds a request's
answers, and gives the collector back as it found it (also on error)."""

import gc

import pytest

from leader_kedro.student.service import collector_paused


@pytest.fixture
def collector_state():
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_collector_is_paused_inside_and_restored_after(collector_state, enabled_before):
    (gc.enable if enabled_before else gc.disable)()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled() is enabled_before


def test_the_collector_is_restored_when_the_request_fails(collector_state):
    gc.enable()
    with pytest.raises(RuntimeError, match="boom"), collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
