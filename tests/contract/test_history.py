"""A training history lists each (phase, epoch) once, however often it was redone."""

from __future__ import annotations

from service.contract.history import record_epoch


def test_a_new_epoch_is_appended_without_changing_the_given_list():
    history = [{"phase": "head", "epoch": 1, "loss": 0.9}]
    recorded = record_epoch(history, {"phase": "head", "epoch": 2, "loss": 0.7})
    assert recorded == [
        {"phase": "head", "epoch": 1, "loss": 0.9},
        {"phase": "head", "epoch": 2, "loss": 0.7},
    ]
    assert history == [{"phase": "head", "epoch": 1, "loss": 0.9}]


def test_an_epoch_done_again_replaces_its_entry_in_place():
    history = [
        {"phase": "head", "epoch": 1, "loss": 0.9},
        {"phase": "head", "epoch": 2, "loss": 0.7},
        {"phase": "fine_tune", "epoch": 1, "loss": 0.5},
    ]
    redone = record_epoch(history, {"phase": "head", "epoch": 2, "loss": 0.6})
    assert redone == [
        {"phase": "head", "epoch": 1, "loss": 0.9},
        {"phase": "head", "epoch": 2, "loss": 0.6},
        {"phase": "fine_tune", "epoch": 1, "loss": 0.5},
    ]


def test_the_same_epoch_number_in_another_phase_is_another_epoch():
    history = [{"phase": "head", "epoch": 1, "loss": 0.9}]
    assert record_epoch(history, {"phase": "fine_tune", "epoch": 1, "loss": 0.5}) == [
        {"phase": "head", "epoch": 1, "loss": 0.9},
        {"phase": "fine_tune", "epoch": 1, "loss": 0.5},
    ]
