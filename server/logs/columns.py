"""StreamHistory's columnar form: a run of history entries as parallel arrays.

Built a page of workouts at a time from the columns the repository reads (numpy arrays, no
Python object per set), then cut into chunks of exactly `chunk_size` entries, the same chunks
the per-entry form sends. Entries are in history order (by workout, then by position; both
reversed when newest first); sets are grouped by entry, each entry's sets in the order they
were performed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from server.logs.repository import EntryColumns, SetColumns

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class HistoryColumns:
    """Entries (one element per performed exercise) and their sets (one element per set).

    Sets that lack a measure carry a sentinel: -1 for reps, NaN for the floats (stored
    values are always finite). `kinds` are indexes in models.SET_KINDS.
    """

    workout_ids: list[str]
    started_micros: np.ndarray  # int64: the workout's start, microseconds since the epoch
    positions: np.ndarray  # int32
    exercise_ids: list[str]
    notes: list[str]
    exercise_names: dict[str, str]  # of the exercises in exercise_ids
    set_entries: np.ndarray  # int32: index of the set's entry; non-decreasing
    reps: np.ndarray  # int32
    weight_kg: np.ndarray  # float64
    rpe: np.ndarray
    rir: np.ndarray
    duration_s: np.ndarray
    distance_m: np.ndarray
    kinds: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.workout_ids)

    @property
    def set_count(self) -> int:
        return len(self.set_entries)

    def _sets(self) -> tuple[np.ndarray, ...]:
        return (
            self.reps, self.weight_kg, self.rpe, self.rir, self.duration_s, self.distance_m,
            self.kinds,
        )  # fmt: skip

    def split(self, count: int) -> tuple[HistoryColumns, HistoryColumns]:
        """The first `count` entries (with their sets), and the rest."""
        cut = int(np.searchsorted(self.set_entries, count))  # first set of entry `count`

        def part(entries: slice, sets: slice, offset: int) -> HistoryColumns:
            exercise_ids = self.exercise_ids[entries]
            return HistoryColumns(
                self.workout_ids[entries],
                self.started_micros[entries],
                self.positions[entries],
                exercise_ids,
                self.notes[entries],
                {e: self.exercise_names[e] for e in exercise_ids},
                self.set_entries[sets] - offset,
                *(column[sets] for column in self._sets()),
            )

        return part(slice(None, count), slice(None, cut), 0), part(
            slice(count, None), slice(cut, None), count
        )

    @staticmethod
    def concat(parts: Sequence[HistoryColumns]) -> HistoryColumns:
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0, *(len(p) for p in parts[:-1])])
        names: dict[str, str] = {}
        for p in parts:
            names.update(p.exercise_names)

        def joined(values: Iterable[list[Any]]) -> list[Any]:
            return [item for value in values for item in value]

        return HistoryColumns(
            joined(p.workout_ids for p in parts),
            np.concatenate([p.started_micros for p in parts]),
            np.concatenate([p.positions for p in parts]),
            joined(p.exercise_ids for p in parts),
            joined(p.notes for p in parts),
            names,
            np.concatenate(
                [p.set_entries + np.int32(o) for p, o in zip(parts, offsets, strict=True)]
            ),
            *(np.concatenate(columns) for columns in zip(*(p._sets() for p in parts), strict=True)),
        )


def build_page(
    workouts: Sequence[tuple[datetime, str]],
    entries: EntryColumns,
    names: dict[str, str],
    sets: SetColumns,
    descending: bool,
) -> HistoryColumns:
    """The entries and sets of one page of workouts (given in history order) as columns,
    with the `names` of their exercises. Sets of no entry are left out."""
    workout = entries.key >> 16
    position = entries.key & 0xFFFF
    # History order: by workout (already in order), then by position, last first when
    # newest first (the exact reverse of oldest first).
    order = np.lexsort((-position if descending else position, workout))
    keys = entries.key[order]
    by_key = np.argsort(keys)  # keys are distinct
    sorted_keys = keys[by_key]
    set_entry_key = sets.key >> 16
    found = np.searchsorted(sorted_keys, set_entry_key)
    known = found < len(keys)
    known[known] = sorted_keys[found[known]] == set_entry_key[known]
    entry = by_key[np.minimum(found, max(len(keys) - 1, 0))] if len(keys) else found
    set_order = np.lexsort((sets.key & 0xFFFF, entry))  # by entry, then set order
    if not known.all():
        set_order = set_order[known[set_order]]
    # Per-entry values taken from per-workout ones by numpy indexing, not a Python loop.
    ids = _objects([workout_id for _, workout_id in workouts])
    starts = np.array([(started - EPOCH) // MICROSECOND for started, _ in workouts], np.int64)
    by_workout = workout[order]
    exercise_ids = _objects(entries.exercise_ids)[order].tolist()
    return HistoryColumns(
        workout_ids=ids[by_workout].tolist(),
        started_micros=starts[by_workout],
        positions=position[order].astype(np.int32),
        exercise_ids=exercise_ids,
        notes=_objects(entries.notes)[order].tolist(),
        exercise_names={e: names[e] for e in set(exercise_ids)},
        set_entries=entry[set_order].astype(np.int32),
        reps=sets.reps[set_order],
        weight_kg=sets.weight_kg[set_order],
        rpe=sets.rpe[set_order],
        rir=sets.rir[set_order],
        duration_s=sets.duration_s[set_order],
        distance_m=sets.distance_m[set_order],
        kinds=sets.kind[set_order],
    )


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-d object array of these values (np.array would make strings fixed-width)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def rechunk(blocks: Iterable[HistoryColumns], size: int) -> Iterator[HistoryColumns]:
    """Chunks of exactly `size` entries (the last one smaller; none for no entries)."""
    pending: list[HistoryColumns] = []
    count = 0
    for block in blocks:
        while count + len(block) >= size:
            head, block = block.split(size - count)
            yield HistoryColumns.concat([*pending, head])
            pending, count = [], 0
        if len(block):
            pending.append(block)
            count += len(block)
    if count:
        yield HistoryColumns.concat(pending)
