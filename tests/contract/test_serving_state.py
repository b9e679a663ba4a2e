"""A model's serving state: labels, served versions, stable history, numbers used."""

from __future__ import annotations

import pytest

from service.contract.serving_state import (
    PENDING_SECONDS,
    STABLE,
    ServingState,
    check_label,
)
from service.errors import InvalidLabelError


def test_served_versions_are_the_labelled_and_the_pending_ones():
    state = ServingState()
    state.set_label(STABLE, 1)
    state.set_label("canary", 3)
    state.serve(2, now=100.0)
    assert state.served == [1, 2, 3]
    state.set_label("canary", 2)  # 3 loses its only label, 2 is no longer pending
    assert (state.served, state.pending) == ([1, 2], {})
    assert state.labels_of(2) == ["canary"]


def test_serving_a_labelled_version_does_not_make_it_pending():
    state = ServingState(labels={STABLE: 1})
    state.serve(1, now=5.0)
    assert state.pending == {}


def test_moving_stable_records_the_previous_version_for_rollback():
    state = ServingState()
    assert state.set_label(STABLE, 1) is None
    assert state.set_label(STABLE, 2) == 1
    state.set_label(STABLE, 2)  # the same version again: no history entry
    state.set_label(STABLE, 3)
    assert state.stable_history == [1, 2]
    state.roll_back(2)
    assert (state.labels[STABLE], state.stable_history) == (2, [1])
    state.roll_back(1)
    assert (state.labels[STABLE], state.stable_history) == (1, [])


def test_other_labels_keep_no_history():
    state = ServingState()
    state.set_label("canary", 1)
    state.set_label("canary", 2)
    assert state.stable_history == []


def test_a_forgotten_version_leaves_history_and_pending():
    state = ServingState(labels={STABLE: 3}, pending={4: 1.0}, stable_history=[1, 2, 1])
    state.forget(1)
    state.forget(4)
    assert (state.stable_history, state.pending) == ([2], {})


def test_pending_versions_expire_when_their_label_move_never_came():
    state = ServingState(pending={1: 1000.0, 2: 1000.0 + PENDING_SECONDS})
    state.expire(now=1000.0 + PENDING_SECONDS + 1)
    assert state.pending == {2: 1000.0 + PENDING_SECONDS}


def test_json_round_trip_keeps_everything():
    state = ServingState(
        labels={STABLE: 2, "canary": 3}, pending={4: 12.5}, stable_history=[1], max_version=4
    )
    assert ServingState.from_json(state.to_json()) == state


@pytest.mark.parametrize("label", ["stable", "canary", "a", "blue-green", "v2", "a" * 32])
def test_valid_labels(label: str):
    assert check_label(label) == label


@pytest.mark.parametrize("label", ["", "Stable", "2fast", "-x", "a_b", "a" * 33, "x\n", "a/b"])
def test_invalid_labels_are_refused(label: str):
    with pytest.raises(InvalidLabelError):
        check_label(label)
