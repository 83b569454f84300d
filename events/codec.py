"""Avro single-object encoding of `Event`s: the bytes every topic carries.

Wire format (Avro spec, "Single object encoding"): the marker C3 01, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
then the Avro binary body of an `aob.events.Envelope` record. The fingerprint names
the writer schema, so a reader can resolve bytes from an older or newer writer
against its own schema: processes of different versions can share one log.

Schemas live in `events/schemas/`, one record per `<fullname>.avsc` file (the layout
`fastavro.schema.load_schema` resolves names from). Evolve them compatibly: add
fields with defaults, never rename or retype. Records stay in the log forever, so
before changing a schema, save the current `envelope_schema()` as
`events/schemas/history/<SCHEMA_FINGERPRINT hex>.avsc`; every file there is
registered as a known writer schema at import. Then regenerate the golden vectors
(tests/events/golden/generate.py), which exist to make such changes deliberate.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import typing
from collections.abc import Callable, Iterable, Mapping
from io import BytesIO
from operator import attrgetter
from pathlib import Path
from typing import Any, Final, cast

import orjson
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, load_schema, parse_schema, to_parsing_canonical_form

from aob.events.types import PAYLOAD_TYPES, Event

__all__ = [
    "MARKER",
    "SCHEMA_FINGERPRINT",
    "Codec",
    "CodecError",
    "decode",
    "dump_json",
    "encode",
    "envelope_schema",
    "register_writer_schema",
    "schema_fingerprint",
]

MARKER: Final = b"\xc3\x01"
_HEADER_LEN: Final = len(MARKER) + 8
_NAMESPACE: Final = "aob.events"
_SCHEMA_DIR: Final = Path(__file__).with_name("schemas")
_ENVELOPE_FIELDS: Final = (
    "event_id",
    "type",
    "key",
    "occurred_at",
    "trace_id",
    "causation_id",
    "actor",
    "payload",
    "span_id",
)

# Compact, order-preserving, UTF-8 JSON text. NaN/Infinity are not JSON: other
# languages' readers would choke on them, so refuse them at the writer.
_STRICT_JSON: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode
# Whatever is not a plain JSON value (a dataclass, a datetime, a subclass of str or
# dict) orjson hands back as a TypeError, so the standard library judges it as before.
_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def dump_json(value: Any) -> str:
    """Compact, order-preserving UTF-8 JSON text of `value`, as events carry it; raises
    ValueError for NaN and infinities, TypeError for what is not JSON.

    `_STRICT_JSON(value)` at a fraction of the cost (a small node output: 2.8 -> 0.5 us,
    of an encode's ~9 us).

    orjson writes NaN and infinities as null where the standard library refuses them:
    text holding "null" anywhere is written again by the standard library, which then
    refuses or agrees. Integers past 64 bits, non-string keys and lone surrogates,
    which orjson refuses, take that way too. Floats may be spelt differently (1e16 for
    1e+16): the same values; nothing compares the text of events, only their values."""
    try:
        text = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        return _STRICT_JSON(value)
    if b"null" in text:
        return _STRICT_JSON(value)
    return text.decode()


_load_json: Final = json.JSONDecoder().decode


class CodecError(ValueError):
    """Bytes that are not a readable event, or an event that cannot be written."""


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    """The 8 bytes that name `schema` on the wire: CRC-64-AVRO of its canonical form.

    fastavro already returns the hex of the little-endian bytes (as Java does).
    """
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(dict(schema)), "CRC-64-AVRO"))


def _plain(schema: Any) -> Any:
    """A deep copy of a schema without fastavro's parse hints (`__fastavro_parsed`, ...).

    The hints are internal and self-referencing; the plain form is JSON, the form a
    schema is published and compared in.
    """
    if isinstance(schema, Mapping):
        return {k: _plain(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def _without_logical_types(schema: Any) -> Any:
    """A copy of `schema` with `logicalType` annotations removed.

    Logical types never change the binary encoding, and the parsing canonical form
    (hence the fingerprint) ignores them. Our dataclasses carry raw values (epoch-ms
    ints), so reading `occurred_at` as a datetime only to convert it back would cost
    time and invite rounding bugs.
    """
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(v) for v in schema]
    return schema


def _parse_for_codec(declared: Mapping[str, Any]) -> dict[str, Any]:
    """The schema as the codec reads and writes with it: parsed once, no logical types."""
    try:
        parsed = parse_schema(_without_logical_types(declared))
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise CodecError(f"invalid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise CodecError("an envelope schema must be a record")
    return parsed


def _load_envelope_schema() -> dict[str, Any]:
    """The shipped Envelope with every payload record inlined (self-contained)."""
    loaded = load_schema(str(_SCHEMA_DIR / f"{_NAMESPACE}.Envelope.avsc"))
    plain: dict[str, Any] = _plain(loaded)
    return plain


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """How one payload class maps to its Avro record, precomputed for speed."""

    cls: type[Any]
    fullname: str
    fields: tuple[str, ...]
    json_fields: tuple[str, ...]
    values: Callable[[Any], tuple[Any, ...]]

    def to_avro(self, payload: Any) -> dict[str, Any]:
        record = dict(zip(self.fields, self.values(payload), strict=True))
        for name in self.json_fields:
            record[name] = dump_json(record[name])
        return record

    def from_avro(self, record: dict[str, Any]) -> Any:
        for name in self.json_fields:
            record[name] = _load_json(record[name])
        return self.cls(**record)


def _values_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A fast `payload -> tuple of field values` (attrgetter returns a bare value for one)."""
    if len(names) == 1:
        (name,) = names
        return lambda obj: (getattr(obj, name),)
    getter: Callable[[Any], tuple[Any, ...]] = attrgetter(*names)
    return getter


def _shapes(envelope: Mapping[str, Any], payload_types: Iterable[type[Any]]) -> list[_Shape]:
    """Pair each payload record of `envelope` with its dataclass, checking they agree.

    Checked once per codec so a drifted `.avsc` fails at import, not on some event.
    """
    names = tuple(f["name"] for f in envelope["fields"])
    if names != _ENVELOPE_FIELDS:
        raise CodecError(f"envelope fields are {names}, expected {_ENVELOPE_FIELDS}")
    (payload_field,) = (f for f in envelope["fields"] if f["name"] == "payload")
    records = {r["name"]: r for r in payload_field["type"] if isinstance(r, dict)}
    shapes = []
    for cls in payload_types:
        fullname = f"{_NAMESPACE}.{cls.__name__}"
        record = records.pop(fullname, None)
        if record is None:
            raise CodecError(f"no record {fullname} in the envelope's payload union")
        hints = typing.get_type_hints(cls)
        fields = tuple(f.name for f in dataclasses.fields(cls))
        avro_types = {f["name"]: f["type"] for f in record["fields"]}
        if tuple(avro_types) != fields:
            raise CodecError(
                f"{fullname} has fields {tuple(avro_types)}, {cls.__qualname__} {fields}"
            )
        json_fields = tuple(name for name in fields if hints[name] is Any)
        for name in json_fields:
            if avro_types[name] != "string":
                raise CodecError(f"{fullname}.{name} holds JSON, so must be an Avro string")
        shapes.append(_Shape(cls, fullname, fields, json_fields, _values_getter(fields)))
    if records:
        raise CodecError(f"payload records without a dataclass: {sorted(records)}")
    return shapes


class Codec:
    """Writes with one envelope schema; reads from any registered writer schema.

    The module-level functions use the default codec built from the shipped schemas.
    Build another one to play a different schema version (tests, migration tools).
    """

    def __init__(
        self, envelope: Mapping[str, Any], payload_types: Iterable[type[Any]] = PAYLOAD_TYPES
    ) -> None:
        declared = _plain(envelope)
        self.fingerprint: Final[bytes] = schema_fingerprint(declared)
        self._declared: Final[dict[str, Any]] = declared
        self._schema: Final = _parse_for_codec(declared)
        self._header: Final = MARKER + self.fingerprint
        shapes = _shapes(self._schema, payload_types)
        self._by_type: Final = {s.cls: s for s in shapes}
        self._by_fullname: Final = {s.fullname: s for s in shapes}
        # fingerprint -> (writer schema, reader schema or None when it is our own).
        self._writers: Final[dict[bytes, tuple[dict[str, Any], dict[str, Any] | None]]] = {
            self.fingerprint: (self._schema, None)
        }

    @property
    def schema(self) -> dict[str, Any]:
        """This codec's self-contained envelope schema, as plain JSON-able data."""
        return copy.deepcopy(self._declared)

    def register_writer_schema(self, schema: Mapping[str, Any]) -> bytes:
        """Make bytes written with `schema` (a self-contained envelope) readable.

        Returns its fingerprint. Registering a known schema again is a no-op.
        Compatibility with this codec's schema is checked when bytes are read.
        """
        declared = _plain(schema)
        fp = schema_fingerprint(declared)
        if fp not in self._writers:
            self._writers[fp] = (_parse_for_codec(declared), self._schema)
        return fp

    def encode(self, event: Event) -> bytes:
        """`event` as Avro single-object bytes, written with this codec's schema."""
        payload = event.payload
        shape = self._by_type.get(type(payload))
        if shape is None:
            raise CodecError(f"cannot encode {type(payload).__qualname__}: not a payload type")
        out = BytesIO()
        out.write(self._header)
        try:
            record = {
                "event_id": event.event_id,
                "type": shape.cls.__name__,
                "key": event.key,
                "occurred_at": event.occurred_at,
                "trace_id": event.trace_id,
                "causation_id": event.causation_id,
                "actor": event.actor,
                # Tuple notation names the union branch: fastavro would otherwise
                # guess it by trying every record.
                "payload": (shape.fullname, shape.to_avro(payload)),
                "span_id": event.span_id,
            }
            schemaless_writer(out, self._schema, record)
        except Exception as exc:  # bad field values surface as assorted fastavro/json errors
            raise CodecError(
                f"cannot encode {shape.cls.__name__} {event.event_id!r}: {exc}"
            ) from exc
        return out.getvalue()

    def decode(self, data: bytes) -> Event:
        """The event in `data`, resolved from its writer schema to this codec's."""
        if data[:2] != MARKER:
            raise CodecError(
                f"not Avro single-object encoding: marker {bytes(data[:2]).hex()!r}, want 'c301'"
            )
        if len(data) < _HEADER_LEN:
            raise CodecError(f"truncated header: {len(data)} bytes")
        fp = bytes(data[2:_HEADER_LEN])
        writer = self._writers.get(fp)
        if writer is None:
            raise CodecError(
                f"unknown writer schema fingerprint {fp.hex()}: register it first "
                "(register_writer_schema or events/schemas/history/)"
            )
        buffer = BytesIO(data)
        buffer.seek(_HEADER_LEN)
        try:
            # An envelope schema always reads as a dict (checked in _parse_for_codec).
            record = cast(
                dict[str, Any],
                schemaless_reader(buffer, writer[0], writer[1], return_record_name=True),
            )
            fullname, body = record["payload"]
            payload = self._by_fullname[fullname].from_avro(body)
            event = Event(
                event_id=record["event_id"],
                key=record["key"],
                occurred_at=record["occurred_at"],
                payload=payload,
                trace_id=record["trace_id"],
                causation_id=record["causation_id"],
                actor=record["actor"],
                span_id=record["span_id"],
            )
        except Exception as exc:  # garbage surfaces as EOF, index, unicode, JSON errors...
            raise CodecError(
                f"malformed event body (writer schema {fp.hex()}): {type(exc).__name__}: {exc}"
            ) from exc
        if buffer.tell() != len(data):
            raise CodecError(f"{len(data) - buffer.tell()} trailing bytes after the event")
        if record["type"] != event.type:
            raise CodecError(f"type field says {record['type']!r}, payload is {event.type}")
        return event


def _register_history(codec: Codec, directory: Path) -> list[bytes]:
    """Register every `*.avsc` in `directory` (self-contained envelopes) as a writer."""
    return [
        codec.register_writer_schema(json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(directory.glob("*.avsc"))
    ]


_DEFAULT: Final = Codec(_load_envelope_schema())
_register_history(_DEFAULT, _SCHEMA_DIR / "history")

SCHEMA_FINGERPRINT: Final[bytes] = _DEFAULT.fingerprint
"""The current writer schema's fingerprint, as it appears in bytes 2..10 of every event."""


def envelope_schema() -> dict[str, Any]:
    """The current self-contained envelope schema (a copy), e.g. to publish or evolve."""
    return _DEFAULT.schema


def register_writer_schema(schema: Mapping[str, Any]) -> bytes:
    """Make `decode` accept bytes written with `schema`; returns its fingerprint."""
    return _DEFAULT.register_writer_schema(schema)


def encode(event: Event) -> bytes:
    """`event` as Avro single-object bytes (marker, fingerprint, binary Envelope).

    The bytes decode to `event` itself in this process while they are recent: the
    projector and the workers read what the coordinator just wrote without decoding it."""
    data = _DEFAULT.encode(event)
    _remember(data, event)
    return data


def as_logged(event: Event) -> Event:
    """`event` as a reader of the log gets it after a restart: through the codec, never
    from the cache (JSON values come back with lists for tuples, string keys)."""
    return _DEFAULT.decode(_DEFAULT.encode(event))


# In one process several consumers (coordinator, projector, workers) read the same
# record: decode it once, or not at all when this process wrote it. Events are
# immutable and nobody mutates a payload's values (patches and contexts are built on
# copies), so sharing the event is safe. What the codec's round trip would change of
# an event written here (tuples to lists, keys to strings in JSON values) no reader
# tells apart: each serialises both the same, and the fold never builds tuples.
# Oldest out first; an OrderedDict drops its first entry in O(1), a dict does not.
_DECODED: collections.OrderedDict[bytes, Event] = collections.OrderedDict()
_DECODED_MAX = 4096
_CACHEABLE_BYTES = 16 * 1024


def _remember(data: bytes, event: Event) -> None:
    if len(data) <= _CACHEABLE_BYTES:
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.popitem(last=False)
        _DECODED[data] = event


def decode(data: bytes) -> Event:
    """The event in `data`; raises `CodecError` for anything that is not one."""
    key = bytes(data)
    event = _DECODED.get(key)
    if event is None:
        event = _DEFAULT.decode(key)
        _remember(key, event)
    return event


def event_type(data: bytes) -> str | None:
    """The payload type named in an encoded event, read without decoding it (None if
    the bytes are not an envelope). The envelope's first two fields are the event id
    and the type, both Avro strings: a consumer that wants one kind of event among
    many skips the rest for the cost of two varints.
    """
    if data[:2] != MARKER:
        return None
    position = _HEADER_LEN
    try:
        for field in range(2):
            length, position = _read_long(data, position)
            if field == 1:
                return bytes(data[position : position + length]).decode("utf-8")
            position += length
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def _read_long(data: bytes, position: int) -> tuple[int, int]:
    """An Avro long (zigzag varint) at `position`, and the position after it."""
    shift = result = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7
