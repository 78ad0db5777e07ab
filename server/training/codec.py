"""Compact binary forms of a user's stored parameters.

Coefficients: only the rows of W that differ from the population W0 (the state
columns the user ever used), as uint16 row numbers then float32 rows.
Statistics: exercise ids as 16-byte UUIDs with their per-exercise figures, and
transitions as pairs of positions into that id list.
"""

from __future__ import annotations

import uuid

import numpy as np

from client_sdk.model import SequenceStats

_EXERCISE = np.dtype([("count", "<f8"), ("decayed", "<f8"), ("last_time", "<f8")])
_TRANSITION = np.dtype(
    [("src", "<u4"), ("dst", "<u4"), ("count", "<f8"), ("last_time", "<f8"), ("last_index", "<i8")]
)
_HEADER = np.dtype(
    [("ref_time", "<f8"), ("last", "<i4"), ("exercises", "<u4"), ("transitions", "<u4")]
)


def encode_coefficients(w: np.ndarray, prior: np.ndarray) -> bytes:
    rows = np.flatnonzero(np.any(w != prior, axis=1)).astype("<u2")
    count = np.array([len(rows)], dtype="<u2")
    return count.tobytes() + rows.tobytes() + w[rows].astype("<f4").tobytes()


def decode_coefficients(blob: bytes, prior: np.ndarray) -> np.ndarray:
    count = int(np.frombuffer(blob, dtype="<u2", count=1)[0])
    rows = np.frombuffer(blob, dtype="<u2", count=count, offset=2)
    values = np.frombuffer(blob, dtype="<f4", offset=2 + 2 * count)
    w = np.array(prior, dtype=np.float64)
    w[rows] = values.reshape(count, prior.shape[1])
    return w


def encode_stats(stats: SequenceStats, ids: list[str]) -> bytes:
    """ids[row] is the exercise id of feature row `row`."""
    slot = {int(row): i for i, row in enumerate(stats.exercise)}
    last = slot[stats.last_exercise] if stats.last_exercise >= 0 else -1
    header = np.array(
        [(stats.ref_time, last, len(stats.exercise), len(stats.from_exercise))], _HEADER
    )
    id_bytes = b"".join(uuid.UUID(ids[row]).bytes for row in stats.exercise)
    per_exercise = np.empty(len(stats.exercise), _EXERCISE)
    per_exercise["count"] = stats.count
    per_exercise["decayed"] = stats.decayed
    per_exercise["last_time"] = stats.last_time
    transitions = np.empty(len(stats.from_exercise), _TRANSITION)
    transitions["src"] = [slot[int(row)] for row in stats.from_exercise]
    transitions["dst"] = [slot[int(row)] for row in stats.to_exercise]
    transitions["count"] = stats.transition_count
    transitions["last_time"] = stats.transition_last_time
    transitions["last_index"] = stats.transition_last_index
    return header.tobytes() + id_bytes + per_exercise.tobytes() + transitions.tobytes()


def decode_stats(blob: bytes) -> tuple[list[str], SequenceStats]:
    """(exercise ids, stats whose exercise rows index that id list)."""
    header = np.frombuffer(blob, _HEADER, count=1)[0]
    k, m = int(header["exercises"]), int(header["transitions"])
    at = _HEADER.itemsize
    ids = [str(uuid.UUID(bytes=blob[at + 16 * i : at + 16 * (i + 1)])) for i in range(k)]
    at += 16 * k
    per_exercise = np.frombuffer(blob, _EXERCISE, count=k, offset=at)
    at += _EXERCISE.itemsize * k
    transitions = np.frombuffer(blob, _TRANSITION, count=m, offset=at)
    stats = SequenceStats(
        ref_time=float(header["ref_time"]),
        last_exercise=int(header["last"]),
        exercise=np.arange(k, dtype=np.int64),
        count=per_exercise["count"].astype(np.float64),
        decayed=per_exercise["decayed"].astype(np.float64),
        last_time=per_exercise["last_time"].astype(np.float64),
        from_exercise=transitions["src"].astype(np.int64),
        to_exercise=transitions["dst"].astype(np.int64),
        transition_count=transitions["count"].astype(np.float64),
        transition_last_time=transitions["last_time"].astype(np.float64),
        transition_last_index=transitions["last_index"].astype(np.int64),
    )
    return ids, stats
