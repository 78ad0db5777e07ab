"""Notebook helpers: the training history as a pandas DataFrame, and progress plots.

pandas and matplotlib are the optional extra `repwise[notebook]`. They are imported only when
these functions run, so the rest of the SDK works without them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from typing import TYPE_CHECKING, Any

from repwise.v1 import common_pb2, log_pb2

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

COLUMNS = (
    "workout_id",
    "workout_start_time",  # tz-aware UTC
    "position",  # of the exercise within its workout, from 0
    "exercise_id",
    "exercise_name",
    "set_index",  # of the set within its exercise, from 0
    "kind",  # warmup, normal, drop or failure
    "reps",
    "weight",  # in the unit of frame.attrs["weight_unit"]
    "rpe",
    "rir",
    "duration_s",
    "distance_m",
)
# The server stores an unspecified kind as NORMAL.
KINDS = {
    log_pb2.SET_KIND_UNSPECIFIED: "normal",
    log_pb2.SET_KIND_WARMUP: "warmup",
    log_pb2.SET_KIND_NORMAL: "normal",
    log_pb2.SET_KIND_DROP: "drop",
    log_pb2.SET_KIND_FAILURE: "failure",
}
UNITS = {common_pb2.WEIGHT_UNIT_KG: "kg", common_pb2.WEIGHT_UNIT_LB: "lb"}
# The same rule as server/logs/stats.py: Epley is unreliable past 12 reps to failure.
MAX_E1RM_REPS = 12
INSTALL_HINT = "pip install 'repwise[notebook]'"


def _missing(what: str) -> ImportError:
    return ImportError(f"{what} needs pandas and matplotlib: {INSTALL_HINT}")


def history_frame(chunks: Iterable[log_pb2.StreamHistoryResponse]) -> pd.DataFrame:
    """One row per set of the streamed history, with the COLUMNS above. Measures that were
    not logged are missing (NaN, or <NA> for reps); attrs["weight_unit"] says "kg" or "lb"."""
    try:
        import pandas as pd
    except ImportError as error:
        raise _missing("history_frame()") from error

    rows: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    unit = ""
    for chunk in chunks:
        unit = UNITS.get(chunk.weight_unit, unit)
        for entry in chunk.entries:
            started = entry.workout_start_time.ToDatetime(tzinfo=UTC)
            performed = entry.exercise
            for index, item in enumerate(performed.sets):
                duration = item.duration.ToTimedelta().total_seconds()
                values = (
                    entry.workout_id,
                    started,
                    entry.position,
                    performed.exercise_id,
                    performed.exercise_name,
                    index,
                    KINDS.get(item.kind, "normal"),
                    item.reps if item.HasField("reps") else None,
                    item.weight if item.HasField("weight") else None,
                    item.rpe if item.HasField("rpe") else None,
                    item.rir if item.HasField("rir") else None,
                    duration if item.HasField("duration") else None,
                    item.distance_m if item.HasField("distance_m") else None,
                )
                for name, value in zip(COLUMNS, values, strict=True):
                    rows[name].append(value)

    frame = pd.DataFrame(
        {
            "workout_id": pd.Series(rows["workout_id"], dtype="str"),
            "workout_start_time": pd.to_datetime(pd.Series(rows["workout_start_time"]), utc=True),
            "position": pd.Series(rows["position"], dtype="int64"),
            "exercise_id": pd.Series(rows["exercise_id"], dtype="str"),
            "exercise_name": pd.Series(rows["exercise_name"], dtype="str"),
            "set_index": pd.Series(rows["set_index"], dtype="int64"),
            "kind": pd.Series(rows["kind"], dtype="str"),
            "reps": pd.Series(rows["reps"], dtype="Int64"),
            **{
                name: pd.Series(rows[name], dtype="float64")
                for name in ("weight", "rpe", "rir", "duration_s", "distance_m")
            },
        }
    )
    frame.attrs["weight_unit"] = unit
    return frame


def progress_frame(history: pd.DataFrame) -> pd.DataFrame:
    """One row per session (one exercise in one workout), oldest first: workout_id,
    workout_start_time, exercise_id, best_e1rm and volume, by the server's rules
    (server/logs/stats.py): warm-ups count for nothing; a set's estimated 1RM is Epley on the
    reps to failure (reps + RIR, else reps + 10 − RPE), the weight itself for a single, and 0
    without weight or reps or past 12 reps to failure; volume is Σ weight × reps."""
    work = history[history["kind"] != "warmup"]
    weight = work["weight"].fillna(0.0)
    reps = work["reps"].astype("float64").fillna(0.0)
    reserve = work["rir"].fillna(10 - work["rpe"]).fillna(0.0).clip(lower=0.0)
    to_failure = reps + reserve
    estimable = (weight > 0) & (reps >= 1) & (to_failure <= MAX_E1RM_REPS)
    e1rm = weight.where(to_failure == 1, weight * (1 + to_failure / 30)).where(estimable, 0.0)
    sessions = (
        work.assign(best_e1rm=e1rm, volume=weight * reps)
        .groupby(["workout_id", "workout_start_time", "exercise_id"], as_index=False)
        .agg(best_e1rm=("best_e1rm", "max"), volume=("volume", "sum"))
    )
    return sessions.sort_values(["workout_start_time", "workout_id"], ignore_index=True)


def plot_progress(history: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Plot best estimated 1RM (left axis) and volume (right axis) per session of the one
    exercise in `history`; returns the 1RM axes. Raises ValueError when there is nothing to
    plot."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise _missing("plot_progress()") from error

    sessions = progress_frame(history)
    if sessions.empty:
        raise ValueError("no sets (other than warm-ups) to plot")
    if sessions["exercise_id"].nunique() > 1:
        raise ValueError("plot one exercise at a time: filter the history by exercise_id")
    if ax is None:
        _, ax = plt.subplots()
    unit = history.attrs.get("weight_unit", "")
    # Sessions without an estimate (high reps, bodyweight) have volume but no 1RM point.
    estimated = sessions[sessions["best_e1rm"] > 0]
    (e1rm_line,) = ax.plot(
        estimated["workout_start_time"].dt.to_pydatetime(),
        estimated["best_e1rm"].to_numpy(),
        marker="o",
        label="best estimated 1RM",
    )
    ax.set_ylabel(f"estimated 1RM ({unit})" if unit else "estimated 1RM")
    volume_ax = ax.twinx()
    (volume_line,) = volume_ax.plot(
        sessions["workout_start_time"].dt.to_pydatetime(),
        sessions["volume"].to_numpy(),
        marker="s",
        linestyle="--",
        color="tab:orange",
        label="volume",
    )
    volume_ax.set_ylabel(f"volume ({unit} × reps)" if unit else "volume")
    names = history.loc[history["exercise_name"] != "", "exercise_name"]
    ax.set_title(names.iloc[0] if len(names) else sessions["exercise_id"].iloc[0])
    ax.legend(handles=[e1rm_line, volume_line], loc="upper left")
    ax.figure.autofmt_xdate()
    return ax
