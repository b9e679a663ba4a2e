"""A job's training history: one entry per finished epoch, known by its phase and number.

The worker reports epochs to the job store and the trainer keeps them for the model card.
A job resumed after a crash may finish an epoch an earlier attempt had already reported;
both sides record it with ``record_epoch``, so no history lists an epoch twice.
"""

from __future__ import annotations

from typing import Any

Epoch = dict[str, Any]


def record_epoch(history: list[Epoch], epoch: Epoch) -> list[Epoch]:
    """A new list: ``history`` with ``epoch`` replacing the entry of the same phase and
    number, or appended when there is none."""
    key = (epoch.get("phase"), epoch.get("epoch"))
    recorded: list[Epoch] = []
    replaced = False
    for entry in history:
        if (entry.get("phase"), entry.get("epoch")) == key:
            recorded.append(epoch)
            replaced = True
        else:
            recorded.append(entry)
    return recorded if replaced else [*recorded, epoch]
