"""Schedules: which epochs are measured, checked against explicit lists."""

from __future__ import annotations

import pickle

import pytest

from lightning_sensitivity.schedules import at_epochs, every_n_epochs, log_spaced, resolve_schedule


def measured(schedule, upto=20):
    return [e for e in range(upto) if schedule(e)]


@pytest.mark.parametrize(
    ("n", "at_init", "expected"),
    [
        (1, True, list(range(10))),
        (1, False, list(range(1, 10))),
        (3, True, [0, 3, 6, 9]),
        (4, False, [4, 8]),
        (None, True, [0]),
        (None, False, []),
    ],
)
def test_every_n_epochs(n, at_init, expected):
    assert measured(every_n_epochs(n, at_init=at_init), 10) == expected


def test_log_spaced():
    assert measured(log_spaced(), 70) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert measured(log_spaced(at_init=False), 70) == [1, 2, 4, 8, 16, 32, 64]


def test_at_epochs():
    assert measured(at_epochs([5, 0, 2, 5])) == [0, 2, 5]
    assert measured(at_epochs([])) == []


def test_resolve_precedence():
    assert measured(resolve_schedule(2, None, False, True), 7) == [0, 2, 4, 6]
    # explicit epochs win over everything, at_init included
    assert measured(resolve_schedule(1, [3], True, True), 7) == [3]
    assert measured(resolve_schedule(1, None, True, False), 9) == [1, 2, 4, 8]
    assert measured(resolve_schedule(None, None, False, True), 9) == [0]


def test_picklable_and_readable():
    for schedule in (every_n_epochs(2), at_epochs([1, 3]), log_spaced(False)):
        clone = pickle.loads(pickle.dumps(schedule))
        assert measured(clone) == measured(schedule)
        assert "(" in repr(schedule)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"every_n_epochs": -2}, ValueError, "every_n_epochs"),
        ({"every_n_epochs": 1.5}, TypeError, "every_n_epochs"),
        ({"every_n_epochs": True}, TypeError, "every_n_epochs"),
        ({"every_n_epochs": "2"}, TypeError, "every_n_epochs"),
        ({"epochs": [1, -1]}, ValueError, "epochs"),
        ({"epochs": [1.0]}, TypeError, "epochs"),
        ({"epochs": 3}, TypeError, "epochs"),
        ({"epochs": "12"}, TypeError, "epochs"),
        ({"log_spaced": 1}, TypeError, "log_spaced"),
        ({"at_init": None}, TypeError, "at_init"),
    ],
)
def test_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}`"):
        resolve_schedule(**kwargs)


def test_schedule_rejects_non_int_epoch():
    with pytest.raises(TypeError):
        every_n_epochs(1)(1.0)
