"""Which versions of a model are served, under which labels: the model's serving state.

One JSON file per model, ``<repo>/<model>/serving.json``, next to its versions (TF Serving
ignores anything under a base path that is not a number). The repository reads and writes
it under its lock and renders ``models.config`` from every model's state:

- ``labels``: label → version. ``stable`` is what ``/predict`` answers by default,
  ``canary`` what a fine-tune that was not promoted is served under; any label matching
  ``LABEL_PATTERN`` may be set by hand.
- ``pending``: versions served ahead of a label move, while they load (TF Serving refuses
  a label on a version that is not loaded yet), with the time they were added.
- The served versions are the labelled ones and the pending ones: models.config lists
  exactly those in a ``specific`` version policy.
- ``stable_history``: the earlier ``stable`` versions, oldest first, for rollback.
- ``max_version``: the highest version number ever published; a number is never reused,
  even after its version was deleted.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from service.errors import InvalidLabelError

LABEL_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
_LABEL = re.compile(LABEL_PATTERN.strip("^$"))
STABLE = "stable"
CANARY = "canary"
STATE_FILE = "serving.json"
STATE_FORMAT = 1
# A pending version that never got its label (its mover crashed) stops being served then.
PENDING_SECONDS = 900.0
HISTORY_LIMIT = 100


def check_label(label: str) -> str:
    """``label`` if it is a valid label name, else ``InvalidLabelError`` (400)."""
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise InvalidLabelError(
            f"Invalid label {label!r}: use 1 to 32 characters from a-z, 0-9 and '-',"
            " starting with a letter"
        )
    return label


@dataclass
class ServingState:
    """One model's serving state (see the module docstring)."""

    labels: dict[str, int] = field(default_factory=dict)
    pending: dict[int, float] = field(default_factory=dict)
    stable_history: list[int] = field(default_factory=list)
    max_version: int = 0

    @property
    def served(self) -> list[int]:
        """The versions the model server should have loaded, oldest first."""
        return sorted(set(self.labels.values()) | set(self.pending))

    def labels_of(self, version: int) -> list[str]:
        """The labels that point at ``version``, sorted."""
        return sorted(label for label, v in self.labels.items() if v == version)

    def serve(self, version: int, now: float | None = None) -> None:
        """Serve ``version`` ahead of a label move."""
        if version not in self.labels.values():
            self.pending[version] = time.time() if now is None else now

    def set_label(self, label: str, version: int) -> int | None:
        """Point ``label`` at ``version``; return the version it pointed at before."""
        previous = self.labels.get(label)
        self.labels[label] = version
        self.pending.pop(version, None)
        if label == STABLE and previous is not None and previous != version:
            self.stable_history = [*self.stable_history, previous][-HISTORY_LIMIT:]
        return previous

    def roll_back(self, version: int) -> None:
        """Point ``stable`` at ``version``, taking it (and anything after it) off the history."""
        index = len(self.stable_history) - 1 - self.stable_history[::-1].index(version)
        self.stable_history = self.stable_history[:index]
        self.labels[STABLE] = version
        self.pending.pop(version, None)

    def drop_label(self, label: str) -> int | None:
        """Remove ``label``; return the version it pointed at (None if it had none)."""
        return self.labels.pop(label, None)

    def forget(self, version: int) -> None:
        """The version is gone from disk: nothing may point at it or roll back to it."""
        self.pending.pop(version, None)
        self.stable_history = [v for v in self.stable_history if v != version]

    def expire(self, now: float | None = None) -> None:
        """Stop serving pending versions whose label move never happened."""
        cutoff = (time.time() if now is None else now) - PENDING_SECONDS
        self.pending = {v: t for v, t in self.pending.items() if t > cutoff}

    def to_json(self) -> str:
        data = {
            "format": STATE_FORMAT,
            "labels": dict(sorted(self.labels.items())),
            "pending": {str(v): t for v, t in sorted(self.pending.items())},
            "stable_history": self.stable_history,
            "max_version": self.max_version,
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ServingState:
        data: dict[str, Any] = json.loads(text)
        return cls(
            labels={str(k): int(v) for k, v in data.get("labels", {}).items()},
            pending={int(k): float(t) for k, t in data.get("pending", {}).items()},
            stable_history=[int(v) for v in data.get("stable_history", [])],
            max_version=int(data.get("max_version", 0)),
        )
