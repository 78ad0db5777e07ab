"""Hypothesis strategies for protobuf messages, built from their descriptors.

- `messages(descriptor)`: any message of that type, fields at their boundaries: integers at
  their limits, floats with NaN, ±inf, −0 and subnormals, unicode, NUL and very long strings,
  unknown enum numbers, Timestamps and Durations out of range, nested and repeated messages,
  maps and oneofs, with recursion bounded.
- `mutations(base, plausible)`: a valid message with one to a few fields changed, to a
  boundary value or to a plausible one, or cleared; repeated fields also grow or repeat an
  element. Random messages mostly die at the first check; these reach the deeper code.
- `plausible_messages(descriptor, plausible)`: a message whose fields all hold plausible
  values, for requests without a hand-written valid example.
- `corrupted(data)`: bytes that are mostly not a valid encoding of any message.
- `poisoned(valid)`: not a strategy but every variant of a valid message with one field at a
  time at one of its worst values, for a deterministic sweep.

`Plausible` maps a field to realistic values by its name (ids, emails, time zones...); the
caller fills it with what the server really holds.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

FD = FieldDescriptor
MAX_DEPTH = 5
# A repeated field holds a few elements, or sometimes very many copies of one
# (past every "at most N" limit).
MANY = (101, 501, 1001, 5001)
# Past REPWISE_MAX_MESSAGE_BYTES (4 MiB), so some requests are refused for their size.
HUGE = 4 * 1024 * 1024 + 1

INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
NAN = math.nan
DOUBLE_EDGES = (
    0.0, -0.0, NAN, -NAN, math.inf, -math.inf,
    5e-324, -5e-324,  # the smallest subnormals
    2.2250738585072014e-308,  # the smallest normal
    1.7976931348623157e308, -1.7976931348623157e308,
    1e-9, 0.1, 0.5, 1.0, -1.0, 2.5, 1e6, 1e16, 2.0**53 + 1,
)  # fmt: skip
FLOAT_EDGES = (0.0, -0.0, NAN, math.inf, -math.inf, 1.401298464324817e-45, 3.4028234663852886e38)
STRING_EDGES = (
    "", " ", "\x00", "a\x00b", "\t\n\r", "\x7f", "\x1b[31m", "é", "e\u0301", "\u202eevil",
    "\ufeff", "\u200b", "\uffff", "\U0010ffff", "🏋️\u200d♀️", "Ω≈ç√", "ﬁ", "İ", "ß",
    "null", "None", "-1", "0", "1e999", "NaN", "true", "%s%n", "{}", "[]", "../..", "\\",
    "'; DROP TABLE users; --", "\" OR 1=1 --", "<script>", "a" * 129, "a" * 255,
)  # fmt: skip
# Timestamp seconds: years 1 and 9999 (the valid range) and one past each, and int64's limits.
TIMESTAMP_SECONDS = (
    -62135596800, -62135596801, 253402300799, 253402300800, 0, -1, 1, 2**31, -(2**31),
    2**63 - 1, -(2**63), 1_700_000_000, 4_102_444_800,
)  # fmt: skip
NANOS = (0, 1, 999_999_999, 1_000_000_000, -1, -999_999_999, 2**31 - 1, -(2**31))
# Duration seconds: ±10000 years is the valid range.
DURATION_SECONDS = (0, 1, -1, 59, 86400, 86401, 315576000000, 315576000001, -315576000000)
DURATION_SECONDS += (2**63 - 1, -(2**63))


def is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)  # type: ignore[no-any-return]


def _int(kind: int) -> st.SearchStrategy[int]:
    lo, hi = INT_RANGES[kind]
    edges = [e for e in (lo, lo + 1, hi - 1, hi, 0, 1, 2, 7, 100, 501, 1001, -1, -100) if e >= lo]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(-3, 1001))


TEXT = st.text(st.characters(codec="utf-8"), max_size=24)


# NUL gets a branch of its own: PostgreSQL refuses it in text, so it finds the most bugs.
NUL_STRINGS = st.sampled_from(("\x00", "a\x00b", "slug-\x00"))
SHORT_STRINGS = st.one_of(NUL_STRINGS, st.sampled_from(STRING_EDGES), TEXT)
SHORT_BYTES = st.binary(max_size=64)
LENGTHS = (201, 1001, 10_001, 70_000, HUGE)


def _strings(longest: int) -> st.SearchStrategy[str]:
    """Short strings, or strings of one to two characters repeated up to `longest` long."""
    sizes = [n for n in LENGTHS if n <= longest]
    if not sizes:
        return SHORT_STRINGS
    long = st.builds(
        lambda unit, n: unit * n, st.text(min_size=1, max_size=2), st.sampled_from(sizes)
    )
    return st.one_of(SHORT_STRINGS, long)


def _bytes(longest: int) -> st.SearchStrategy[bytes]:
    sizes = [n for n in LENGTHS if n <= longest]
    if not sizes:
        return SHORT_BYTES
    return st.one_of(SHORT_BYTES, st.builds(lambda n: b"\xff" * n, st.sampled_from(sizes)))


DOUBLES = st.one_of(st.sampled_from(DOUBLE_EDGES), st.floats())
FLOATS = st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(width=32))


def _enum(f: FieldDescriptor) -> st.SearchStrategy[int]:
    numbers = sorted(v.number for v in f.enum_type.values)
    unknown = (-1, max(numbers) + 1, 2**31 - 1, -(2**31))
    return st.one_of(
        st.sampled_from(numbers), st.sampled_from(unknown), st.integers(-(2**31), 2**31 - 1)
    )


def _timestamp_parts() -> st.SearchStrategy[dict[str, int]]:
    seconds = st.one_of(st.sampled_from(TIMESTAMP_SECONDS), st.integers(-(2**63), 2**63 - 1))
    nanos = st.one_of(st.sampled_from(NANOS), st.integers(-(2**31), 2**31 - 1))
    return st.fixed_dictionaries({}, optional={"seconds": seconds, "nanos": nanos})


def _duration_parts() -> st.SearchStrategy[dict[str, int]]:
    seconds = st.one_of(st.sampled_from(DURATION_SECONDS), st.integers(-(2**63), 2**63 - 1))
    nanos = st.one_of(st.sampled_from(NANOS), st.integers(-(2**31), 2**31 - 1))
    return st.fixed_dictionaries({}, optional={"seconds": seconds, "nanos": nanos})


def _field_names(descriptor: Descriptor, prefix: str = "", depth: int = 0) -> list[str]:
    """Every field path of a message type, dotted, for FieldMask paths."""
    names: list[str] = []
    for f in descriptor.fields:
        names.append(prefix + f.name)
        if f.message_type is not None and not is_map(f) and depth < 2:
            names += _field_names(f.message_type, f"{prefix}{f.name}.", depth + 1)
    return names


def _field_mask(hints: Sequence[str]) -> st.SearchStrategy[dict[str, list[str]]]:
    path = st.one_of(st.sampled_from(hints), SHORT_STRINGS) if hints else SHORT_STRINGS
    return st.fixed_dictionaries({"paths": st.lists(path, max_size=4)})


WELL_KNOWN: dict[str, Callable[[Sequence[str]], st.SearchStrategy[dict[str, Any]]]] = {
    "google.protobuf.Timestamp": lambda _: _timestamp_parts(),
    "google.protobuf.Duration": lambda _: _duration_parts(),
    "google.protobuf.FieldMask": _field_mask,
}


class _Builder:
    """Strategies for the fields of one request type, cached per (field, depth).

    Sizes stay bounded: only the request's own fields hold strings past the 4 MiB limit,
    the next level up to 70 kB, deeper ones 10 kB; a repeated field of very many copies
    repeats a `small` element (short strings, at most two elements per list)."""

    def __init__(self, root: Descriptor, small: bool = False) -> None:
        self.mask_hints = _field_names(root)
        self.small = small
        self._cache: dict[tuple[str, int], st.SearchStrategy[Any]] = {}
        self._small = _Builder(root, small=True) if not small else self

    def _longest(self, depth: int, repeated: bool) -> int:
        if self.small:
            return 0
        if depth == 0 and not repeated:
            return HUGE
        return 70_000 if depth <= 1 else 10_001

    def _repeated(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[list[Any]]:
        element = self.scalar(f, depth, repeated=True)
        if self.small:
            return st.lists(element, max_size=2)
        many = st.builds(
            lambda item, n: [item] * n,
            self._small.scalar(f, depth, repeated=True),
            st.sampled_from(MANY),
        )
        return st.one_of(st.lists(element, max_size=4), many)

    def scalar(
        self, f: FieldDescriptor, depth: int, repeated: bool = False
    ) -> st.SearchStrategy[Any]:
        if f.type in INT_RANGES:
            return _int(f.type)
        if f.type == FD.TYPE_BOOL:
            return st.booleans()
        if f.type == FD.TYPE_DOUBLE:
            return DOUBLES
        if f.type == FD.TYPE_FLOAT:
            return FLOATS
        if f.type == FD.TYPE_STRING:
            return _strings(self._longest(depth, repeated))
        if f.type == FD.TYPE_BYTES:
            return _bytes(self._longest(depth, repeated))
        if f.type == FD.TYPE_ENUM:
            return _enum(f)
        if f.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
            return self.message(f.message_type, depth + 1)
        raise TypeError(f"no strategy for {f.full_name} of type {f.type}")

    def value(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """A value for the field as `assign` takes it: a list, a dict or one value."""
        key = (f.full_name, depth)
        if key not in self._cache:
            if is_map(f):
                k, v = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                strategy: st.SearchStrategy[Any] = st.dictionaries(
                    self.scalar(k, depth, True), self.scalar(v, depth, True), max_size=3
                )
            elif f.is_repeated:
                strategy = self._repeated(f, depth)
            else:
                strategy = self.scalar(f, depth)
            self._cache[key] = strategy
        return self._cache[key]

    def message(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        if descriptor.full_name in WELL_KNOWN:
            parts = WELL_KNOWN[descriptor.full_name](self.mask_hints)
            return st.builds(lambda kw: message_class(descriptor)(**kw), parts)
        if depth > MAX_DEPTH:
            return st.just(message_class(descriptor)())
        return _message(self, descriptor, depth)


@st.composite
def _message(draw: st.DrawFn, builder: _Builder, descriptor: Descriptor, depth: int) -> Message:
    message = message_class(descriptor)()
    for f in descriptor.fields:
        if f.containing_oneof is None and draw(st.booleans()):
            assign(message, f, draw(builder.value(f, depth)))
    # A oneof (and a proto3 `optional`, a oneof of one) holds at most one of its fields.
    for oneof in descriptor.oneofs:
        chosen = draw(st.sampled_from([None, *oneof.fields]))
        if chosen is not None:
            assign(message, chosen, draw(builder.value(chosen, depth)))
    return message


def assign(message: Message, f: FieldDescriptor, value: Any) -> None:
    """Set a field to a value as the strategies give it (a list, a dict or one value)."""
    if is_map(f):
        target = getattr(message, f.name)
        message.ClearField(f.name)
        for k, v in value.items():
            if f.message_type.fields_by_name["value"].message_type is not None:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif f.is_repeated:
        message.ClearField(f.name)
        getattr(message, f.name).extend(value)
    elif f.message_type is not None:
        getattr(message, f.name).CopyFrom(value)
    else:
        setattr(message, f.name, value)


def messages(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    """Any message of this type, its fields at their boundaries."""
    return _Builder(descriptor).message(descriptor, 0)


# --- plausible values ----------------------------------------------------------------------


@dataclass
class Plausible:
    """Realistic values by field name: `by_name[name]` for an exact field name, then
    `by_suffix` for names ending in a suffix (e.g. "_id"), checked in order."""

    by_name: dict[str, st.SearchStrategy[Any]] = field(default_factory=dict)
    by_suffix: list[tuple[str, st.SearchStrategy[Any]]] = field(default_factory=list)
    messages: dict[str, st.SearchStrategy[Message]] = field(default_factory=dict)

    def scalar(self, f: FieldDescriptor) -> st.SearchStrategy[Any]:
        name = f.name
        if name in self.by_name:
            return self.by_name[name]
        for suffix, strategy in self.by_suffix:
            if name.endswith(suffix):
                return strategy
        if f.message_type is not None:
            if f.message_type.full_name in self.messages:
                return self.messages[f.message_type.full_name]
            return plausible_messages(f.message_type, self)
        if f.type in INT_RANGES:
            lo, _ = INT_RANGES[f.type]
            return st.integers(max(lo, 0), 50)
        if f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            return st.sampled_from((0.0, 1.0, 2.5, 20.0, 100.0))
        if f.type == FD.TYPE_BOOL:
            return st.booleans()
        if f.type == FD.TYPE_ENUM:
            return st.sampled_from([v.number for v in f.enum_type.values])
        if f.type == FD.TYPE_BYTES:
            return st.binary(max_size=8)
        return st.text(string.ascii_letters + " -", min_size=1, max_size=12)

    def value(self, f: FieldDescriptor) -> st.SearchStrategy[Any]:
        if is_map(f):
            k, v = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            return st.dictionaries(self.scalar(k), self.scalar(v), max_size=2)
        if f.is_repeated:
            return st.lists(self.scalar(f), max_size=3)
        return self.scalar(f)


def plausible_messages(descriptor: Descriptor, plausible: Plausible) -> st.SearchStrategy[Message]:
    """A message with plausible values in some of its fields."""
    return st.deferred(lambda: _plausible_message(descriptor, plausible))


@st.composite
def _plausible_message(draw: st.DrawFn, descriptor: Descriptor, plausible: Plausible) -> Message:
    message = message_class(descriptor)()
    for f in descriptor.fields:
        if f.containing_oneof is None and draw(st.integers(0, 3)) > 0:
            assign(message, f, draw(plausible.value(f)))
    for oneof in descriptor.oneofs:
        chosen = draw(st.sampled_from([None, *oneof.fields]))
        if chosen is not None:
            assign(message, chosen, draw(plausible.value(chosen)))
    return message


# --- mutations of a valid message ----------------------------------------------------------


def _slots(message: Message, depth: int = 0) -> list[tuple[Message, FieldDescriptor]]:
    """Every field of the message and of the submessages it holds: what a mutation may change."""
    slots = [(message, f) for f in message.DESCRIPTOR.fields]
    if depth >= MAX_DEPTH:
        return slots
    for f in message.DESCRIPTOR.fields:
        if f.message_type is None or is_map(f):
            continue
        if f.is_repeated:
            for item in getattr(message, f.name)[:8]:  # of 5001 copies, a few will do
                slots += _slots(item, depth + 1)
        elif message.HasField(f.name):
            slots += _slots(getattr(message, f.name), depth + 1)
    return slots


def _mutate_once(
    draw: st.DrawFn, message: Message, builder: _Builder, plausible: Plausible
) -> None:
    slots = _slots(message)
    if not slots:  # a message without fields: only its bytes can be wrong (see corrupted)
        return
    holder, f = draw(st.sampled_from(slots))
    generic = builder.value(f, 1)
    realistic = plausible.value(f)
    action = draw(st.sampled_from(("boundary", "plausible", "clear", "grow")))
    if action == "clear":
        holder.ClearField(f.name)
    elif action == "grow" and f.is_repeated and not is_map(f):
        items = list(getattr(holder, f.name))
        extra = draw(st.one_of(realistic, generic))
        # Repeat an element the message already has (a duplicate id, say) or add new ones.
        if items and draw(st.booleans()):
            item = draw(st.sampled_from(items))
            if _size(item) < 10_000:
                extra = [item] * draw(st.sampled_from((1, 2, *MANY)))
        assign(holder, f, items + list(extra))
    else:
        assign(holder, f, draw(realistic if action == "plausible" else generic))


def _size(item: Any) -> int:
    return item.ByteSize() if isinstance(item, Message) else len(str(item))


@st.composite
def _mutations(
    draw: st.DrawFn, base: st.SearchStrategy[Message], plausible: Plausible, most: int
) -> Message:
    original = draw(base)
    message = message_class(original.DESCRIPTOR)()
    message.CopyFrom(original)
    builder = _Builder(message.DESCRIPTOR)
    for _ in range(draw(st.integers(0, most))):
        _mutate_once(draw, message, builder, plausible)
    return message


def mutations(
    base: st.SearchStrategy[Message], plausible: Plausible, most: int = 3
) -> st.SearchStrategy[Message]:
    """A message from `base` (valid ones) with up to `most` fields changed: to a boundary
    value, to a plausible value, cleared, or (repeated fields) grown."""
    return _mutations(base, plausible, most)


# --- bytes that are not a message ----------------------------------------------------------


def corrupted(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, and valid encodings truncated, with bytes flipped or garbage appended:
    mostly invalid protobuf (bad wire types, lengths past the end, invalid UTF-8)."""

    @st.composite
    def damaged(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(valid))
        how = draw(st.sampled_from(("truncate", "flip", "append")))
        if how == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif how == "flip" and data:
            for _ in range(draw(st.integers(1, 4))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        else:
            data += draw(st.binary(min_size=1, max_size=16))
        return bytes(data)

    known_bad = st.sampled_from(
        (
            b"\x0a\xff\xff\xff\xff\x0f",  # a length far past the end
            b"\x0a\x02\xc3\x28",  # field 1 as invalid UTF-8
            b"\x0f",  # wire type 7 does not exist
            b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an 11-byte varint
            b"\x0b" * 200,  # groups nested past the parser's depth limit
        )
    )
    return st.one_of(st.binary(max_size=64), known_bad, damaged())


# --- one field at a time at its worst ------------------------------------------------------

TIMESTAMP_POISONS = (
    {"seconds": -62135596801},  # before year 1
    {"seconds": 253402300800},  # after year 9999
    {"seconds": 0, "nanos": -1},
    {"seconds": 0, "nanos": 1_000_000_000},
)
DURATION_POISONS = ({"seconds": -1}, {"seconds": 315576000001}, {"seconds": 1, "nanos": -1})


def _poisons(f: FieldDescriptor) -> list[Any]:
    """The worst values of one field, as `assign` takes them."""
    if f.message_type is not None:
        kind = f.message_type.full_name
        if kind == "google.protobuf.Timestamp":
            values: list[Any] = [message_class(f.message_type)(**kw) for kw in TIMESTAMP_POISONS]
        elif kind == "google.protobuf.Duration":
            values = [message_class(f.message_type)(**kw) for kw in DURATION_POISONS]
        elif kind == "google.protobuf.FieldMask":
            paths = (["\x00"], ["x" * 70_000], ["no_such_field"], ["a.b.c"])
            values = [message_class(f.message_type)(paths=p) for p in paths]
        else:
            values = [message_class(f.message_type)()]  # present but empty
    elif f.type == FD.TYPE_STRING:
        values = ["\x00", "x" * 70_000, "\u202e\ufeff", " "]
    elif f.type == FD.TYPE_BYTES:
        values = [b"\x00", b"\xff" * 70_000]
    elif f.type in INT_RANGES:
        lo, hi = INT_RANGES[f.type]
        values = sorted({lo, hi, -1 if lo < 0 else hi - 1})
    elif f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        values = [NAN, math.inf, -math.inf, -0.0, 5e-324, -1.0, 1e300]
    elif f.type == FD.TYPE_ENUM:
        values = [-1, max(v.number for v in f.enum_type.values) + 1]
    else:
        values = [True]
    if is_map(f):
        key = f.message_type.fields_by_name["key"]
        keys = _poisons(key)
        value = f.message_type.fields_by_name["value"]
        return [{k: value.default_value} for k in keys if value.message_type is None]
    return [[v] for v in values] if f.is_repeated else values


def _fields(
    message: Message, where: str = "", depth: int = 0
) -> Iterator[tuple[str, Message, Any]]:
    """(path, holder, field) of every field, recursing into the first element of repeated
    submessages and into singular submessages (set or not: setting a field sets them)."""
    for f in message.DESCRIPTOR.fields:
        path = f"{where}{f.name}"
        yield path, message, f
        if f.message_type is None or is_map(f) or f.message_type.full_name in WELL_KNOWN:
            continue
        if depth >= MAX_DEPTH:
            continue
        if not f.is_repeated:
            yield from _fields(getattr(message, f.name), f"{path}.", depth + 1)
        elif items := getattr(message, f.name):
            yield from _fields(items[0], f"{path}[0].", depth + 1)


def poisoned(valid: Message) -> Iterator[tuple[str, Message]]:
    """The valid message with one field at a time at each of its worst values: NUL, 70 kB
    strings, integer limits, NaN and infinities, unknown enums, impossible Timestamps and
    Durations, bad FieldMask paths, empty submessages, and a repeated field's first element
    repeated past every limit. Yields (field path, message)."""
    cls = message_class(valid.DESCRIPTOR)
    for index, (_, holder, f) in enumerate(list(_fields(valid))):
        for choice in range(len(_worst(holder, f))):
            message = cls()
            message.CopyFrom(valid)
            path, holder_copy, field = list(_fields(message))[index]
            assign(holder_copy, field, _worst(holder_copy, field)[choice])
            yield path, message


def _worst(holder: Message, f: FieldDescriptor) -> list[Any]:
    values = _poisons(f)
    if f.is_repeated and not is_map(f) and f.message_type is not None:
        values.append(list(getattr(holder, f.name))[:1] * 1001)
    return values
