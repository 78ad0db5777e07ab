"""Reading other apps' workout exports (Strong, Hevy, FitNotes) and matching their exercise
names to the catalog. Pure functions: no database, no clock.

Units: a file that states its units (Strong's "Weight Unit" column, Hevy's `weight_kg` /
`weight_lbs`, FitNotes' "Weight (kgs)" / "Weight (lbs)" or "Weight Unit") is read in them;
the `unit` argument ("kg" or "lb") only says what a file without units means (Strong's
comma export), and such a file without `unit` is refused rather than guessed. Distances
without a unit are km for kg files and miles for lb files.

Times in these files are local wall time; `time_zone` (IANA) says whose.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.logs.service import KG_PER_LB, M_PER_MILE, SetData

KINDS = ("strong", "hevy", "fitnotes")
MAX_DURATION = timedelta(days=2)
FUZZY_THRESHOLD = 0.85
# A second candidate this close to the best makes a fuzzy match ambiguous.
FUZZY_MARGIN = 0.03


@dataclass(frozen=True)
class ImportedExercise:
    name: str
    notes: str = ""
    sets: tuple[SetData, ...] = ()
    # FitNotes' Category ("Chest", "Legs", ...): a hint for new custom exercises.
    category: str = ""


@dataclass(frozen=True)
class ImportedWorkout:
    key: str  # sha256 of source + start + title: the same workout in the same file, every time
    started_at: datetime
    ended_at: datetime | None
    title: str
    notes: str
    time_zone: str
    exercises: tuple[ImportedExercise, ...]
    line: int  # first line of the file that belongs to it


# --- CSV plumbing ---------------------------------------------------------------------------


class _Rows:
    """Rows of a CSV as dicts keyed by trimmed header, with their 1-based line numbers."""

    def __init__(self, text: str) -> None:
        text = text.lstrip("\ufeff")
        first = next((line for line in text.splitlines() if line.strip()), "")
        if not first:
            raise ValueError("the file is empty")
        delimiter = ";" if first.count(";") > first.count(",") else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        self.header: list[str] = []
        self.rows: list[tuple[int, dict[str, str]]] = []
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if not self.header:
                self.header = [v.strip().lstrip("\ufeff") for v in values]
                continue
            if len(values) > len(self.header) and any(
                v.strip() for v in values[len(self.header) :]
            ):
                raise ValueError(
                    f"line {line}: {len(values)} fields but the header has {len(self.header)}"
                )
            row = {
                h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(self.header)
            }
            self.rows.append((line, row))
        self._lower = {h.lower(): h for h in self.header}

    def column(self, *names: str) -> str | None:
        """The header spelled as in the file, for the first of `names` present (any case)."""
        for name in names:
            if name.lower() in self._lower:
                return self._lower[name.lower()]
        return None

    def require(self, *names: str) -> str:
        found = self.column(*names)
        if found is None:
            raise ValueError(f"line 1: no {names[0]!r} column (found {', '.join(self.header)})")
        return found


def _get(row: dict[str, str], column: str | None) -> str:
    return row.get(column, "") if column else ""


def _number(line: int, column: str, text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    cleaned = text.replace("\u00a0", "").replace(" ", "")
    if "," in cleaned and "." not in cleaned:
        cleaned = cleaned.replace(",", ".")  # decimal comma (semicolon files)
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"line {line}, column {column!r}: {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ValueError(f"line {line}, column {column!r}: {text!r} is not a usable number")
    return value


def _int(line: int, column: str, text: str) -> int | None:
    value = _number(line, column, text)
    if value is None:
        return None
    if value != int(value):
        raise ValueError(f"line {line}, column {column!r}: {text!r} is not a whole number")
    return int(value)


def _rpe(line: int, column: str, text: str) -> float | None:
    value = _number(line, column, text)
    if value is None or value == 0:
        return None
    if not 1 <= value <= 10:
        raise ValueError(f"line {line}, column {column!r}: RPE {text!r} is not between 1 and 10")
    return round(value * 2) / 2


def _zone(time_zone: str) -> ZoneInfo:
    try:
        return ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{time_zone!r} is not an IANA time zone") from None


_DATE_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %I:%M:%S %p",
    "%Y-%m-%d %I:%M %p",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%d %b %Y, %H:%M",
    "%d %B %Y, %H:%M",
    "%b %d, %Y, %I:%M %p",
    "%b %d, %Y, %H:%M",
    "%d.%m.%Y, %H:%M",
    "%d.%m.%Y %H:%M",
    "%d/%m/%Y, %H:%M",
    "%Y-%m-%d",
)


def _when(line: int, column: str, text: str, zone: ZoneInfo) -> datetime:
    cleaned = " ".join(text.replace("\u202f", " ").replace("\u00a0", " ").split())
    if not cleaned:
        raise ValueError(f"line {line}, column {column!r}: is empty")
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        for fmt in _DATE_FORMATS:
            try:
                moment = datetime.strptime(cleaned, fmt)
                break
            except ValueError:
                continue
        else:
            raise ValueError(
                f"line {line}, column {column!r}: {text!r} is not a date and time"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment


def _weight_factor(unit: str, line: int, column: str) -> float:
    unit = unit.strip().lower()
    if unit in ("kg", "kgs", "kilograms"):
        return 1.0
    if unit in ("lb", "lbs", "pounds"):
        return KG_PER_LB
    raise ValueError(f"line {line}, column {column!r}: unknown weight unit {unit!r}")


def _distance_factor(unit: str, line: int, column: str) -> float:
    unit = unit.strip().lower()
    factors = {
        "km": 1000.0,
        "kms": 1000.0,
        "m": 1.0,
        "meters": 1.0,
        "metres": 1.0,
        "mi": M_PER_MILE,
        "mile": M_PER_MILE,
        "miles": M_PER_MILE,
        "ft": 0.3048,
        "feet": 0.3048,
        "yd": 0.9144,
        "yards": 0.9144,
    }
    if unit not in factors:
        raise ValueError(f"line {line}, column {column!r}: unknown distance unit {unit!r}")
    return factors[unit]


def _check_unit(unit: str | None) -> str | None:
    if unit is not None and unit not in ("kg", "lb"):
        raise ValueError(f"unit must be 'kg' or 'lb', not {unit!r}")
    return unit


def _duration(text: str) -> timedelta | None:
    """Strong's workout duration: "1h 2m", "45m", "30s", or "1:02:00"."""
    text = text.strip().lower()
    if not text:
        return None
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
        return _clock(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts:
        return None
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    return timedelta(seconds=seconds)


def _clock(text: str) -> timedelta:
    numbers = [int(p) for p in text.split(":")]
    while len(numbers) < 3:
        numbers.insert(0, 0)
    return timedelta(hours=numbers[0], minutes=numbers[1], seconds=numbers[2])


def _end(start: datetime, end: datetime | None) -> datetime | None:
    if end is None or not start <= end <= start + MAX_DURATION:
        return None
    return end


def _wall(start: datetime) -> str:
    """The file's own wall-clock time: ids must not change when the import's zone does."""
    return start.replace(tzinfo=None).isoformat()


def _key(source: str, *parts: str) -> str:
    return hashlib.sha256("\x1f".join((source, *parts)).encode()).hexdigest()


def _join_notes(notes: Iterable[str]) -> str:
    return "\n".join(dict.fromkeys(n.strip() for n in notes if n.strip()))


@dataclass
class _Builder:
    """Collects rows into one workout; consecutive rows of one name form one exercise."""

    key: str
    started_at: datetime
    ended_at: datetime | None
    title: str
    time_zone: str
    line: int
    notes: list[str] = field(default_factory=list)
    exercises: list[tuple[str, list[str], list[tuple[int, SetData]], str]] = field(
        default_factory=list
    )

    def add(
        self, name: str, notes: str, item: tuple[int, SetData] | None, category: str = ""
    ) -> None:
        if not name:
            return
        if not self.exercises or self.exercises[-1][0] != name:
            self.exercises.append((name, [], [], category))
        self.exercises[-1][1].append(notes)
        if item is not None:
            self.exercises[-1][2].append(item)

    def build(self, order_sets: bool) -> ImportedWorkout:
        exercises = []
        for name, notes, sets, category in self.exercises:
            ordered = sorted(sets, key=lambda pair: pair[0]) if order_sets else sets
            exercises.append(
                ImportedExercise(
                    name=" ".join(name.split()),
                    notes=_join_notes(notes),
                    sets=tuple(s for _, s in ordered),
                    category=category,
                )
            )
        return ImportedWorkout(
            key=self.key,
            started_at=self.started_at,
            ended_at=self.ended_at,
            title=" ".join(self.title.split()),
            notes=_join_notes(self.notes),
            time_zone=self.time_zone,
            exercises=tuple(exercises),
            line=self.line,
        )


# --- Strong ---------------------------------------------------------------------------------

_STRONG_SET_ORDER = re.compile(r"^([WDF]?)(\d*)$", re.IGNORECASE)
_STRONG_SKIPPED_ORDERS = ("rest timer", "note")


def _parse_strong(text: str, unit: str | None, time_zone: str) -> list[ImportedWorkout]:
    rows = _Rows(text)
    zone = _zone(time_zone)
    c_date = rows.require("Date")
    c_title = rows.column("Workout Name")
    c_duration = rows.column("Duration", "Workout Duration")
    c_name = rows.require("Exercise Name")
    c_order = rows.column("Set Order")
    c_weight = rows.column("Weight")
    c_wunit = rows.column("Weight Unit")
    c_reps = rows.column("Reps")
    c_distance = rows.column("Distance")
    c_dunit = rows.column("Distance Unit")
    c_seconds = rows.column("Seconds")
    c_notes = rows.column("Notes")
    c_wnotes = rows.column("Workout Notes")
    c_rpe = rows.column("RPE")
    if c_wunit is None and unit is None and c_weight is not None:
        raise ValueError(
            "this Strong file does not say its weight unit: give the unit (kg or lb) "
            "it was exported in"
        )
    workouts: dict[tuple[str, str], _Builder] = {}
    for line, row in rows.rows:
        date_text, title = _get(row, c_date), _get(row, c_title)
        builder = workouts.get((date_text, title))
        if builder is None:
            start = _when(line, c_date, date_text, zone)
            duration = _duration(_get(row, c_duration))
            builder = workouts[(date_text, title)] = _Builder(
                key=_key("strong", _wall(start), title),
                started_at=start,
                ended_at=_end(start, start + duration if duration else None),
                title=title,
                time_zone=time_zone,
                line=line,
            )
        builder.notes.append(_get(row, c_wnotes))
        name = _get(row, c_name)
        order_text = _get(row, c_order).strip()
        if order_text.lower() in _STRONG_SKIPPED_ORDERS:
            continue
        matched = _STRONG_SET_ORDER.match(order_text)
        if matched is None:
            raise ValueError(f"line {line}, column {c_order!r}: {order_text!r} is not a set order")
        kind = {"w": "warmup", "d": "drop", "f": "failure"}.get(matched.group(1).lower(), "normal")
        index = int(matched.group(2)) if matched.group(2) else 0
        row_unit = _get(row, c_wunit) or unit or "kg"
        weight = _number(line, c_weight or "Weight", _get(row, c_weight))
        if weight is not None:
            weight *= _weight_factor(row_unit, line, c_wunit or "Weight")
        reps = _int(line, c_reps or "Reps", _get(row, c_reps))
        distance = _number(line, c_distance or "Distance", _get(row, c_distance)) or None
        if distance is not None:
            default_unit = "mi" if (unit or row_unit).lower().startswith("lb") else "km"
            distance *= _distance_factor(
                _get(row, c_dunit) or default_unit, line, c_dunit or "Distance"
            )
        seconds = _number(line, c_seconds or "Seconds", _get(row, c_seconds)) or None
        rpe = _rpe(line, c_rpe or "RPE", _get(row, c_rpe))
        if (distance or seconds) and not weight and not reps:
            weight, reps = None, None  # Strong writes 0 for what a cardio set does not measure
        measured = any(v is not None for v in (weight, reps, distance, seconds, rpe))
        item = None
        if order_text or measured:
            item = (
                index,
                SetData(
                    reps=reps,
                    weight_kg=weight,
                    rpe=rpe,
                    duration_s=seconds,
                    distance_m=distance,
                    kind=kind,
                ),
            )
        builder.add(name, _get(row, c_notes), item)
    # Strong lists sets in order; keep the file's order (warm-ups have their own numbering).
    return [b.build(order_sets=False) for b in workouts.values()]


# --- Hevy -----------------------------------------------------------------------------------

_HEVY_KINDS = {
    "normal": "normal",
    "warmup": "warmup",
    "warm_up": "warmup",
    "dropset": "drop",
    "drop": "drop",
    "failure": "failure",
}


def _parse_hevy(text: str, unit: str | None, time_zone: str) -> list[ImportedWorkout]:
    rows = _Rows(text)
    zone = _zone(time_zone)
    c_title = rows.require("title")
    c_start = rows.require("start_time")
    c_end = rows.column("end_time")
    c_description = rows.column("description")
    c_name = rows.require("exercise_title")
    c_notes = rows.column("exercise_notes")
    c_index = rows.column("set_index")
    c_type = rows.column("set_type")
    c_reps = rows.column("reps")
    c_seconds = rows.column("duration_seconds")
    c_rpe = rows.column("rpe")
    weight_columns = {"weight_kg": 1.0, "weight_lbs": KG_PER_LB, "weight_lb": KG_PER_LB}
    c_weight, w_factor = None, 1.0
    for name, factor in weight_columns.items():
        if rows.column(name):
            c_weight, w_factor = rows.column(name), factor
            break
    else:
        if rows.column("weight"):
            if unit is None:
                raise ValueError("this Hevy file does not say its weight unit: give kg or lb")
            c_weight, w_factor = rows.column("weight"), (1.0 if unit == "kg" else KG_PER_LB)
    distance_columns = {"distance_km": 1000.0, "distance_miles": M_PER_MILE, "distance_m": 1.0}
    c_distance, d_factor = None, 1.0
    for name, factor in distance_columns.items():
        if rows.column(name):
            c_distance, d_factor = rows.column(name), factor
            break
    workouts: dict[tuple[str, str, str], _Builder] = {}
    for line, row in rows.rows:
        title, start_text, end_text = _get(row, c_title), _get(row, c_start), _get(row, c_end)
        builder = workouts.get((title, start_text, end_text))
        if builder is None:
            start = _when(line, c_start, start_text, zone)
            end = _when(line, c_end or "end_time", end_text, zone) if end_text else None
            builder = workouts[(title, start_text, end_text)] = _Builder(
                key=_key("hevy", _wall(start), title),
                started_at=start,
                ended_at=_end(start, end),
                title=title,
                time_zone=time_zone,
                line=line,
            )
        builder.notes.append(_get(row, c_description))
        kind_text = _get(row, c_type).lower() or "normal"
        if kind_text not in _HEVY_KINDS:
            raise ValueError(f"line {line}, column {c_type!r}: unknown set type {kind_text!r}")
        weight = _number(line, c_weight or "weight_kg", _get(row, c_weight))
        distance = _number(line, c_distance or "distance_km", _get(row, c_distance))
        index = _int(line, c_index or "set_index", _get(row, c_index))
        item = SetData(
            reps=_int(line, c_reps or "reps", _get(row, c_reps)),
            weight_kg=None if weight is None else weight * w_factor,
            rpe=_rpe(line, c_rpe or "rpe", _get(row, c_rpe)),
            duration_s=_number(line, c_seconds or "duration_seconds", _get(row, c_seconds)),
            distance_m=None if distance is None else distance * d_factor,
            kind=_HEVY_KINDS[kind_text],
        )
        builder.add(
            _get(row, c_name),
            _get(row, c_notes),
            (index if index is not None else line, item),
        )
    return [b.build(order_sets=True) for b in workouts.values()]


# --- FitNotes -------------------------------------------------------------------------------


def _parse_fitnotes(text: str, unit: str | None, time_zone: str) -> list[ImportedWorkout]:
    rows = _Rows(text)
    zone = _zone(time_zone)
    c_date = rows.require("Date")
    c_name = rows.require("Exercise")
    c_category = rows.column("Category")
    c_reps = rows.column("Reps")
    c_distance = rows.column("Distance")
    c_dunit = rows.column("Distance Unit")
    c_time = rows.column("Time")
    c_comment = rows.column("Comment")
    c_weight = rows.column("Weight (kgs)", "Weight (kg)", "Weight (lbs)", "Weight (lb)", "Weight")
    c_wunit = rows.column("Weight Unit")
    header_unit = None
    if c_weight is not None and "(" in c_weight:
        header_unit = "lb" if "lb" in c_weight.lower() else "kg"
    if c_weight is not None and header_unit is None and c_wunit is None and unit is None:
        raise ValueError("this FitNotes file does not say its weight unit: give kg or lb")
    workouts: dict[str, _Builder] = {}
    for line, row in rows.rows:
        day = _get(row, c_date)
        builder = workouts.get(day)
        if builder is None:
            start = _when(line, c_date, day, zone)
            builder = workouts[day] = _Builder(
                key=_key("fitnotes", _wall(start)),
                started_at=start,
                ended_at=None,
                title="",
                time_zone=time_zone,
                line=line,
            )
        weight = _number(line, c_weight or "Weight", _get(row, c_weight))
        if weight is not None:
            weight *= _weight_factor(
                header_unit or _get(row, c_wunit) or unit or "kg", line, c_wunit or c_weight or ""
            )
        distance = _number(line, c_distance or "Distance", _get(row, c_distance))
        if distance is not None:
            default_unit = "mi" if (header_unit or unit) == "lb" else "km"
            distance *= _distance_factor(
                _get(row, c_dunit) or default_unit, line, c_dunit or "Distance Unit"
            )
        time_text = _get(row, c_time)
        seconds: float | None = None
        if time_text:
            if re.fullmatch(r"\d+(:\d{1,2}){1,2}", time_text):
                seconds = _clock(time_text).total_seconds()
            else:
                seconds = _number(line, c_time or "Time", time_text)
        item = SetData(
            reps=_int(line, c_reps or "Reps", _get(row, c_reps)),
            weight_kg=weight,
            duration_s=seconds or None,
            distance_m=distance or None,
        )
        builder.add(_get(row, c_name), _get(row, c_comment), (0, item), _get(row, c_category))
    return [b.build(order_sets=False) for b in workouts.values()]


_PARSERS: dict[str, Callable[[str, str | None, str], list[ImportedWorkout]]] = {
    "strong": _parse_strong,
    "hevy": _parse_hevy,
    "fitnotes": _parse_fitnotes,
}


def parse(
    kind: str, text: str, unit: str | None = None, time_zone: str = "UTC"
) -> list[ImportedWorkout]:
    """Workouts of an export file, oldest first. Bad rows raise ValueError naming the line
    and the column."""
    if kind not in _PARSERS:
        raise ValueError(f"unknown import kind {kind!r}; expected one of {', '.join(KINDS)}")
    workouts = _PARSERS[kind](text, _check_unit(unit), time_zone)
    return sorted(workouts, key=lambda w: (w.started_at, w.line))


# --- matching names to the catalog ----------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    name: str
    aliases: tuple[str, ...] = ()
    equipment: str | None = None
    primary_muscles: tuple[str, ...] = ()
    # The user's own exercise: wins ties against the shared catalog.
    private: bool = False
    # Exercises an earlier import created match only exactly or normalized, so that a later
    # import of the same file matches exactly as the first one did.
    fuzzy: bool = True


@dataclass(frozen=True)
class Match:
    exercise_id: str | None
    method: str  # "exact" | "alias" | "normalized" | "fuzzy" | "new"
    score: float
    catalog_name: str


# Equipment words as apps spell them (suffixes like "(Barbell)" and words in names).
EQUIPMENT_WORDS = {
    "barbell": "barbell",
    "bb": "barbell",
    "dumbbell": "dumbbell",
    "dumbbells": "dumbbell",
    "db": "dumbbell",
    "dumbell": "dumbbell",
    "dumbells": "dumbbell",
    "cable": "cable",
    "cables": "cable",
    "machine": "machine",
    "smith machine": "machine",
    "plate loaded": "machine",
    "kettlebell": "kettlebells",
    "kettlebells": "kettlebells",
    "kb": "kettlebells",
    "band": "bands",
    "bands": "bands",
    "resistance band": "bands",
    "bodyweight": "body_only",
    "body weight": "body_only",
    "body only": "body_only",
    "ez bar": "ez_curl_bar",
    "ez-bar": "ez_curl_bar",
    "ez curl bar": "ez_curl_bar",
    "medicine ball": "medicine_ball",
    "stability ball": "exercise_ball",
    "exercise ball": "exercise_ball",
    "foam roller": "foam_roll",
}
# What an app's equipment word may also mean in our catalog.
COMPATIBLE = {
    "barbell": {"barbell", "ez_curl_bar"},
    "ez_curl_bar": {"ez_curl_bar", "barbell"},
    "machine": {"machine", "cable"},
    "cable": {"cable", "machine"},
    "body_only": {"body_only", "other"},
}
_TOKEN_SYNONYMS = {
    "db": "dumbbell",
    "dumbell": "dumbbell",
    "dumbells": "dumbbell",
    "dumbbells": "dumbbell",
    "bb": "barbell",
    "kb": "kettlebell",
    "kettlebells": "kettlebell",
    "ez": "ez",
    "biceps": "bicep",
    "triceps": "tricep",
    "pullup": "pull up",
    "pushup": "push up",
    "chinup": "chin up",
    "situp": "sit up",
    "flye": "fly",
    "flyes": "fly",
    "flys": "fly",
    "flies": "fly",
}
_SUFFIX = re.compile(r"\s*\(([^()]*)\)\s*$")


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    for word in re.findall(r"[a-z0-9]+", _ascii(text).replace("'", "")):
        word = _TOKEN_SYNONYMS.get(word, word)
        for part in word.split():
            if len(part) > 4 and part.endswith(("sses", "ches", "shes", "xes", "zes")):
                part = part[:-2]
            elif len(part) > 3 and part.endswith("s") and not part.endswith("ss"):
                part = part[:-1]
            out.append(part)
    return out


def normalize(name: str) -> str:
    """Case, punctuation, plurals, "DB"/"BB" and word order do not matter."""
    return " ".join(sorted(_tokens(name)))


_EQUIPMENT_TOKENS = frozenset(
    {"barbell", "dumbbell", "cable", "machine", "kettlebell", "band", "bodyweight", "smith"}
)


def _core(name: str) -> str:
    """The normalized name without equipment words (fuzzy matching handles those apart)."""
    base, _ = split_equipment(name)
    return " ".join(sorted(t for t in _tokens(base) if t not in _EQUIPMENT_TOKENS))


def split_equipment(name: str) -> tuple[str, str | None]:
    """("Bench Press (Barbell)") -> ("Bench Press", "barbell"); unknown suffixes stay."""
    found = _SUFFIX.search(name)
    if found:
        word = " ".join(_ascii(found.group(1)).replace("-", " ").split())
        equipment = EQUIPMENT_WORDS.get(word) or EQUIPMENT_WORDS.get(word.replace(" ", "-"))
        if equipment:
            return name[: found.start()].strip(), equipment
    return name.strip(), None


def equipment_of(name: str) -> str | None:
    """The equipment a name names: its "(Suffix)", else an equipment word in it."""
    base, equipment = split_equipment(name)
    if equipment:
        return equipment
    text = " " + " ".join(re.findall(r"[a-z0-9-]+", _ascii(base))) + " "
    for word, value in sorted(EQUIPMENT_WORDS.items(), key=lambda kv: -len(kv[0])):
        if f" {word} " in text:
            return value
    return None


def _compatible(wanted: str | None, entry: CatalogEntry) -> bool:
    if wanted is None or entry.equipment is None:
        return True
    return entry.equipment in COMPATIBLE.get(wanted, {wanted})


def _pick(entries: Sequence[CatalogEntry], wanted: str | None) -> CatalogEntry | None:
    """One entry out of several with the same name: the compatible one, the user's own one;
    None when still ambiguous."""
    unique = list({e.id: e for e in entries}.values())
    if len(unique) > 1:
        unique = [e for e in unique if _compatible(wanted, e)] or unique
    if len(unique) > 1:
        unique = [e for e in unique if e.private] or unique
    return unique[0] if len(unique) == 1 else None


def match_names(names: Iterable[str], catalog: Sequence[CatalogEntry]) -> dict[str, Match]:
    """Match each name: exact name, alias, normalized form (the "(Equipment)" suffix read as
    an equipment word), then fuzzy among exercises of compatible equipment. Ambiguous or
    unmatched names are "new"."""
    by_name: dict[str, list[CatalogEntry]] = {}
    by_alias: dict[str, list[CatalogEntry]] = {}
    by_norm: dict[str, list[CatalogEntry]] = {}
    for entry in catalog:
        by_name.setdefault(entry.name.casefold(), []).append(entry)
        by_norm.setdefault(normalize(entry.name), []).append(entry)
        for alias in entry.aliases:
            by_alias.setdefault(alias.casefold(), []).append(entry)
            by_norm.setdefault(normalize(alias), []).append(entry)
    result: dict[str, Match] = {}
    for name in names:
        if name in result:
            continue
        result[name] = _match_one(name, catalog, by_name, by_alias, by_norm)
    return result


def _match_one(
    name: str,
    catalog: Sequence[CatalogEntry],
    by_name: dict[str, list[CatalogEntry]],
    by_alias: dict[str, list[CatalogEntry]],
    by_norm: dict[str, list[CatalogEntry]],
) -> Match:
    wanted = equipment_of(name)
    key = " ".join(name.split()).casefold()
    for index, method in ((by_name, "exact"), (by_alias, "alias")):
        if key in index:
            chosen = _pick(index[key], wanted)
            if chosen is not None:
                return Match(chosen.id, method, 1.0, chosen.name)
    base, suffix = split_equipment(name)
    forms = [normalize(name)]
    if suffix:
        forms.append(normalize(base))  # "Leg Press (Machine)" ~ "Leg Press", if compatible
    for form in forms:
        candidates = [e for e in by_norm.get(form, []) if _compatible(wanted, e)]
        chosen = _pick(candidates, wanted) if candidates else None
        if chosen is not None:
            return Match(chosen.id, "normalized", 1.0, chosen.name)
    target = _core(name)
    if not target:
        return Match(None, "new", 0.0, "")
    scores: dict[str, tuple[float, CatalogEntry]] = {}
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    for entry in catalog:
        if not entry.fuzzy or not _compatible(wanted, entry):
            continue
        for candidate in (entry.name, *entry.aliases):
            matcher.set_seq1(_core(candidate))
            if matcher.real_quick_ratio() < FUZZY_THRESHOLD or matcher.quick_ratio() < (
                FUZZY_THRESHOLD
            ):
                continue
            score = matcher.ratio()
            if score > scores.get(entry.id, (0.0, entry))[0]:
                scores[entry.id] = (score, entry)
    ranked = sorted(scores.values(), key=lambda pair: (-pair[0], pair[1].name))
    if ranked and ranked[0][0] >= FUZZY_THRESHOLD:
        best, entry = ranked[0]
        if len(ranked) == 1 or ranked[1][0] < best - FUZZY_MARGIN:
            return Match(entry.id, "fuzzy", round(best, 3), entry.name)
    return Match(None, "new", 0.0, "")
