"""The Avro wire format: round trips, rejection of garbage, golden bytes, evolution."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form

from aob.events import codec
from aob.events import types as t
from aob.events.codec import (
    SCHEMA_FINGERPRINT,
    Codec,
    CodecError,
    as_logged,
    decode,
    encode,
    envelope_schema,
    register_writer_schema,
)
from aob.events.types import PAYLOAD_BY_NAME, PAYLOAD_TYPES, Event, Json

GOLDEN = Path(__file__).with_name("golden") / "events.json"

NESTED: Json = {
    "str": 'naïve 日本語 🚀 \u0000 "quoted" \\ \n',
    "ints": [0, -1, 2**63 - 1, -(2**63), 2**80],
    "floats": [0.1, -2.5e-300, 1e300],
    "bools": [True, False],
    "null": None,
    "empty": [{}, [], ""],
    "deep": {"a": {"b": {"c": [[{"d": "ü"}]]}}},
}


def _ev(payload: Any, **envelope: Any) -> Event:
    return Event(
        event_id="e-1", key="k-1", occurred_at=1_700_000_000_000, payload=payload, **envelope
    )


# Per payload type: only required fields (defaults and None left alone), then every
# field set, with unicode and nested JSON where the type allows.
SAMPLES: list[Event] = [
    _ev(t.WorkflowCreated("wf", 1, None)),
    _ev(t.WorkflowCreated("wf-ü", 2**40, NESTED), trace_id="tr", causation_id="c", actor="ä"),
    _ev(t.TagMoved("prod", "wf", 1)),
    _ev(t.TagMoved("prod", "wf", 2, previous_workflow_id="wf", previous_version=0)),
    _ev(t.RunSubmitted("r", {}, [], [])),
    _ev(t.RunSubmitted("r", NESTED, "text", ["a", "ß"], workflow_id="w", version=-3, tag="t")),
    _ev(t.NodeScheduled("r", "n", "http", 0, 1, None, {"inputs": {}})),
    _ev(t.NodeScheduled("r", "n", "http", 5, 2, NESTED, [1, "two"], timeout_ms=0)),
    _ev(t.NodeStarted("r", "n", 0, 1, "w-1")),
    _ev(t.NodeCompleted("r", "n", 0, 1, None)),
    _ev(t.NodeCompleted("r", "n", 3, 4, NESTED)),
    _ev(t.NodeFailed("r", "n", 0, 1, "boom")),
    _ev(t.NodeFailed("r", "n", 0, 1, "💥", retryable=False)),
    _ev(t.NodeSkipped("r", "n", 0, "dead path")),
    _ev(t.NodeSkipped("r", "n", 0, "unknown type", warning=True)),
    _ev(t.TimerSet("r", "tm", -(2**63), "timeout", "n", 0, 1)),
    _ev(t.TimerSet("r", "tm", 2**63 - 1, "retry", "n", 1, 2)),
    _ev(t.TimerFired("r", "tm")),
    _ev(t.PatchProposed("r", "p", [])),
    _ev(t.PatchProposed("r", "p", [{"op": "remove", "path": "/nodes/0"}], reason="why ✓")),
    _ev(t.PatchApplied("r", "p", 1)),
    _ev(t.PatchApplied("r", "p", 2, added_nodes=["x", "ÿ"])),
    _ev(t.PatchRejected("r", "p", [])),
    _ev(t.PatchRejected("r", "p", ["a", "", "ω"])),
    _ev(t.ApprovalRequested("r", "a", "n", 0, "ok?")),
    _ev(t.ApprovalRequested("r", "a", "n", 1, "ok?", NESTED, ["al", "bo"], deadline=7)),
    _ev(t.ApprovalDecided("r", "a", "approved", "al")),
    _ev(t.ApprovalDecided("r", "a", "rejected", "bo", comments="nope ✗")),
    _ev(t.RunCancelRequested("r")),
    _ev(t.RunCancelRequested("r", reason="stop")),
    _ev(t.RunCompleted("r", None)),
    _ev(t.RunCompleted("r", NESTED)),
    _ev(t.RunFailed("r", "err")),
    _ev(t.RunFailed("r", "err", node_id="n")),
    _ev(t.RunCancelled("r")),
    _ev(t.RunCancelled("r", reason="asked")),
    _ev(t.PatchProposed("r", "p", [], node_id="agent-ü")),
    _ev(t.PatchReviewRequested("r", "p")),
    _ev(t.PatchReviewed("r", "p", "approve", "al")),
    _ev(t.PatchReviewed("r", "p", "reject", "bo", reason="nope ✗")),
    _ev(t.AgentUsageRecorded("r", "n", 0, 1, "m", 0, 0, 0, 0)),
    _ev(t.AgentUsageRecorded("r", "n", 2, 3, "ü", 4, 2**40, 5, 2**40 + 5, 7, 8, "failed")),
    _ev(t.AgentUsageRecorded("r", "n", 0, 1, "m", 1, 1, 1, 2, calls=[{"name": "ü"}])),
    _ev(t.ToolRegistered("t", "pipeline", None)),
    _ev(t.ToolRegistered("t-ü", "openapi", NESTED, description="docs ✓")),
    _ev(t.NodeScheduled("r", "n", "x", 0, 1, {}, {}, output_refs={"a": "sha256:0"}, tenant="ü")),
    _ev(t.NodeCompleted("r", "n", 0, 1, None, output_ref="sha256:1")),
    _ev(t.RunCompleted("r", None, output_ref="sha256:2")),
    _ev(t.PatchProposed("r", "p", [], node_id="a", iteration=2, attempt=3)),
    _ev(t.ExpressionRequested("r", "q", "output", ".x", None)),
    _ev(t.ExpressionRequested("r", "q", "edge", ".x", NESTED, {"a": "b"}, "s", "t", 4, "ü")),
    _ev(t.ExpressionEvaluated("r", "q")),
    _ev(t.ExpressionEvaluated("r", "q", NESTED, "sha256:3", "budget ✗")),
    _ev(t.RecordDeadLettered("g", "aob.runs", 0, 0, "k", b"", "why")),
    _ev(t.RecordDeadLettered("g", "aob.runs", 7, 2**40, "k", bytes(range(256)), "✗", "r")),
    _ev(t.WorkflowCreateRequested("w", NESTED)),
    _ev(t.WorkflowCreateRequested("w", {"name": "w"}, "prod", "ü")),
    _ev(t.TagMoveRequested("prod", "w", 2**40)),
    _ev(t.TagMoveRequested("prod", "w", 1, "acme")),
    _ev(t.WorkflowRequestRefused("evt", "name-taken", "tag", "prod")),
    _ev(t.NodeFailed("r", "n", 0, 1, "x", retryable=False, not_retried="why ✓")),
    _ev(t.LoopExhausted("r", "a", "b", 2**40, failed=True)),
    _ev(t.ApprovalVoted("r", "a", "reject", "ü", "why ✗")),
    _ev(t.ApprovalEscalated("r", "a", 2**40, [], None)),
    _ev(t.SignalReceived("r", "s", NESTED, "x")),
    _ev(t.ApprovalDecided("r", "a", "approve", "x", "", [{"v": NESTED}], {"n": 1})),
]


def _body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """Avro binary of `record`, written by fastavro directly (bypassing the codec)."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def _raw_envelope(payload_name: str, payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    record = {
        "event_id": "e",
        "type": payload_name,
        "key": "k",
        "occurred_at": 1,
        "trace_id": "",
        "causation_id": None,
        "actor": "system",
        "payload": (f"aob.events.{payload_name}", payload),
    }
    record.update(overrides)
    return record


def _payload_record(schema: dict[str, Any], name: str) -> dict[str, Any]:
    payload_field = next(f for f in schema["fields"] if f["name"] == "payload")
    return next(r for r in payload_field["type"] if r["name"] == f"aob.events.{name}")


# --- round trips -------------------------------------------------------------------


def test_samples_cover_every_payload_type() -> None:
    assert {type(e.payload) for e in SAMPLES} == set(PAYLOAD_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_round_trip(event: Event) -> None:
    data = encode(event)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == SCHEMA_FINGERPRINT
    decoded = as_logged(event)  # through the codec: `decode(data)` is `event` itself
    assert decode(data) is event
    assert decoded == event
    assert type(decoded.payload) is type(event.payload)
    assert type(decoded.occurred_at) is int  # not a datetime: logical type is not applied


def test_defaults_survive_the_round_trip() -> None:
    decoded = as_logged(Event("e", "k", 5, t.ApprovalRequested("r", "a", "n", 0, "m")))
    assert decoded.trace_id == ""
    assert decoded.causation_id is None
    assert decoded.actor == "system"
    payload = decoded.payload
    assert isinstance(payload, t.ApprovalRequested)
    assert payload.payload is None
    assert payload.approvers == []
    assert payload.deadline is None


def test_json_fields_are_compact_utf8_text_in_key_order() -> None:
    data = encode(_ev(t.RunCompleted("r", {"z": [1, 2.5], "é": {"ü": None}, "a": True})))
    assert '{"z":[1,2.5],"é":{"ü":null},"a":true}'.encode() in data


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ({"n": 2**70, "s": "null"}, {"n": 2**70, "s": "null"}),  # past 64 bits: json's way
        ({1: "one", None: 2}, {"1": "one", "null": 2}),  # keys written as json.dumps does
        ([1e16, 1e-7, -0.0, "\u2028é"], [1e16, 1e-7, -0.0, "\u2028é"]),
    ],
)
def test_json_values_come_back_as_the_standard_library_would_give_them(
    value: Any, logged: Any
) -> None:
    data = encode(_ev(t.RunCompleted("r", value)))
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    payload = Codec(envelope_schema()).decode(data).payload
    assert isinstance(payload, t.RunCompleted)
    assert payload.output == json.loads(text) == logged


@pytest.mark.parametrize(
    "payload",
    [
        t.RunCompleted("r", {1, 2}),  # not JSON
        t.RunCompleted("r", float("nan")),  # not JSON either, though Python would write it
        t.RunCompleted("r", {"a": [1.5, float("-inf")], "b": None}),  # deep, beside a null
        t.RunCompleted("r", {"a": [float("inf")]}),  # orjson would write null
        t.NodeStarted("r", "n", "zero", 1, "w"),  # type: ignore[arg-type]  # str, not long
        t.NodeStarted("r", "n", 2**63, 1, "w"),  # does not fit a long
        t.TimerFired(None, "tm"),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_values_the_schema_cannot_carry(payload: Any) -> None:
    with pytest.raises(CodecError, match="cannot encode"):
        encode(_ev(payload))


def test_encode_rejects_a_non_payload() -> None:
    with pytest.raises(CodecError, match="not a payload type"):
        encode(_ev({"run_id": "r"}))


# --- the header --------------------------------------------------------------------


def _crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO, written from the Avro specification (independent of fastavro)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize(
    ("canonical", "published"),
    # From apache/avro share/test/data/schema-tests.txt (Java's signed longs).
    [('"null"', 7195948357588979594), ('"int"', 8247732601305521295)],
)
def test_crc64_avro_reference_matches_published_vectors(canonical: str, published: int) -> None:
    assert _crc64_avro(canonical.encode()) == published % 2**64


def test_fingerprint_is_little_endian_crc64_of_the_canonical_form() -> None:
    canonical = to_parsing_canonical_form(envelope_schema())
    assert _crc64_avro(canonical.encode()).to_bytes(8, "little") == SCHEMA_FINGERPRINT
    assert encode(SAMPLES[0])[2:10] == SCHEMA_FINGERPRINT


# --- the schemas agree with the dataclasses ----------------------------------------


def test_envelope_schema_shape() -> None:
    schema = envelope_schema()
    assert schema["name"] == "aob.events.Envelope"
    fields = {f["name"]: f for f in schema["fields"]}
    assert list(fields) == [
        "event_id",
        "type",
        "key",
        "occurred_at",
        "trace_id",
        "causation_id",
        "actor",
        "payload",
        "span_id",  # added with a null default: older readers and writers still agree
    ]
    assert fields["span_id"]["type"] == ["null", "string"]
    assert fields["span_id"]["default"] is None
    assert fields["occurred_at"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert fields["causation_id"] == {
        "name": "causation_id",
        "type": ["null", "string"],
        "default": None,
    }
    assert fields["trace_id"]["default"] == ""
    assert fields["actor"]["default"] == "system"
    names = [r["name"] for r in fields["payload"]["type"]]
    assert names == [f"aob.events.{cls.__name__}" for cls in PAYLOAD_TYPES]
    schema["fields"].clear()  # a copy: the codec's schema is unaffected
    assert envelope_schema()["fields"]


def _expected_avro_field(name: str, hint: Any, field: dataclasses.Field[Any]) -> dict[str, Any]:
    if hint is Any:
        avro_type: Any = "string"  # JSON text
    elif hint is str:
        avro_type = "string"
    elif hint is int:
        avro_type = "long"
    elif hint is bool:
        avro_type = "boolean"
    elif hint is bytes:
        avro_type = "bytes"
    elif hint == list[str]:
        avro_type = {"type": "array", "items": "string"}
    elif hint == dict[str, str]:
        avro_type = {"type": "map", "values": "string"}
    elif hint == str | None:
        avro_type = ["null", "string"]
    elif hint == int | None:
        avro_type = ["null", "long"]
    else:
        raise AssertionError(f"no Avro mapping for {hint}")
    expected: dict[str, Any] = {"name": name, "type": avro_type}
    if field.default is not dataclasses.MISSING:
        expected["default"] = json.dumps(field.default) if hint is Any else field.default
    elif field.default_factory is not dataclasses.MISSING:
        made = field.default_factory()
        expected["default"] = json.dumps(made) if hint is Any else made
    return expected


@pytest.mark.parametrize("cls", PAYLOAD_TYPES, ids=lambda c: c.__name__)
def test_payload_schema_matches_dataclass(cls: type[Any]) -> None:
    record = _payload_record(envelope_schema(), cls.__name__)
    hints = typing.get_type_hints(cls)
    expected = [_expected_avro_field(f.name, hints[f.name], f) for f in dataclasses.fields(cls)]
    actual = [{k: v for k, v in f.items() if k != "doc"} for f in record["fields"]]
    assert actual == expected


def test_codec_refuses_a_schema_that_drifted_from_the_dataclasses() -> None:
    schema = envelope_schema()
    _payload_record(schema, "NodeStarted")["fields"].pop()  # drop `worker`
    with pytest.raises(CodecError, match="NodeStarted"):
        Codec(schema)


def test_codec_refuses_a_json_field_that_is_not_a_string() -> None:
    schema = envelope_schema()
    output = _payload_record(schema, "RunCompleted")["fields"][1]
    assert output["name"] == "output"
    output["type"] = "long"
    with pytest.raises(CodecError, match=r"RunCompleted\.output holds JSON"):
        Codec(schema)


# --- garbage -----------------------------------------------------------------------

_VALID = encode(SAMPLES[10])  # NodeCompleted with nested JSON
_HEADER = b"\xc3\x01" + SCHEMA_FINGERPRINT
_ENVELOPE = envelope_schema()
_NODE_COMPLETED = {"run_id": "r", "node_id": "n", "iteration": 0, "attempt": 1, "output": "1"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "marker ''"),
        (b"\xc3", "marker 'c3'"),
        (b"\x00\x01" + _VALID[2:], "marker '0001'"),
        (b'{"event_id": "e"}', "marker '7b22'"),
        (b"\xc3\x01\x00\x01", "truncated header"),
        (
            b"\xc3\x01" + bytes(8) + _VALID[10:],
            "unknown writer schema fingerprint 0000000000000000",
        ),
        (_VALID + b"\x00", "1 trailing bytes"),
        (_HEADER + random.Random(7).randbytes(64), "malformed"),
        # Union index 19 is one past the last payload record.
        (
            _HEADER
            + _body(_ENVELOPE, _raw_envelope("RunCancelled", {"run_id": "r"}))[:-4]
            + b"\x26",
            "malformed",
        ),
        (
            _HEADER
            + _body(
                _ENVELOPE, _raw_envelope("NodeCompleted", _NODE_COMPLETED | {"output": "{nope"})
            ),
            "JSONDecodeError",
        ),
        (
            _HEADER
            + _body(_ENVELOPE, _raw_envelope("NodeCompleted", _NODE_COMPLETED, type="NodeStarted")),
            "type field says 'NodeStarted', payload is NodeCompleted",
        ),
        (_HEADER + b"\x02\xff" + _VALID[12:], "UnicodeDecodeError"),
    ],
)
def test_decode_rejects_garbage(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(data)


def test_decode_rejects_every_truncation() -> None:
    for end in range(len(_VALID)):
        with pytest.raises(CodecError):
            decode(_VALID[:end])


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


# --- golden bytes: any change to the wire format fails here ------------------------


def _golden() -> dict[str, Any]:
    vectors: dict[str, Any] = json.loads(GOLDEN.read_text(encoding="utf-8"))
    return vectors


def _unplain(value: Any) -> Any:
    """A payload field from golden JSON: {"hex": ...} holds bytes."""
    if isinstance(value, dict) and set(value) == {"hex"}:
        return bytes.fromhex(value["hex"])
    return value


def _event_from_json(data: dict[str, Any]) -> Event:
    cls = PAYLOAD_BY_NAME[data["type"]]
    return Event(
        event_id=data["event_id"],
        key=data["key"],
        occurred_at=data["occurred_at"],
        payload=cls(**{k: _unplain(v) for k, v in data["payload"].items()}),
        trace_id=data["trace_id"],
        causation_id=data["causation_id"],
        actor=data["actor"],
    )


def test_golden_vectors_cover_every_payload_type() -> None:
    assert {v["event"]["type"] for v in _golden().values()} == set(PAYLOAD_BY_NAME)


@pytest.mark.parametrize("name", sorted(_golden()))
def test_golden_vector(name: str) -> None:
    vector = _golden()[name]
    event = _event_from_json(vector["event"])
    golden = bytes.fromhex(vector["hex"])
    assert encode(event).hex() == vector["hex"], "wire format changed: see golden/generate.py"
    assert decode(golden) == event


# --- schema evolution --------------------------------------------------------------


class V2:
    """Payload classes of a future catalog in which NodeCompleted gained a field."""

    @dataclass(frozen=True, slots=True)
    class NodeCompleted:
        run_id: str
        node_id: str
        iteration: int
        attempt: int
        output: Json
        output_ref: str | None = None
        note: str | None = None


V2_PAYLOAD_TYPES = tuple(V2.NodeCompleted if c is t.NodeCompleted else c for c in PAYLOAD_TYPES)


def _v2_schema() -> dict[str, Any]:
    schema = envelope_schema()
    _payload_record(schema, "NodeCompleted")["fields"].append(
        {"name": "note", "type": ["null", "string"], "default": None}
    )
    return schema


def test_old_reader_reads_bytes_from_a_newer_writer() -> None:
    v2 = Codec(_v2_schema(), V2_PAYLOAD_TYPES)
    assert v2.fingerprint != SCHEMA_FINGERPRINT
    new_bytes = v2.encode(_ev(V2.NodeCompleted("r", "n", 1, 2, {"x": [1]}, note="added later")))
    assert new_bytes[2:10] == v2.fingerprint

    v1 = Codec(envelope_schema())
    with pytest.raises(
        CodecError, match=f"unknown writer schema fingerprint {v2.fingerprint.hex()}"
    ):
        v1.decode(new_bytes)
    assert v1.register_writer_schema(v2.schema) == v2.fingerprint
    assert v1.register_writer_schema(v2.schema) == v2.fingerprint  # idempotent

    expected = _ev(t.NodeCompleted("r", "n", 1, 2, {"x": [1]}))
    assert v1.decode(new_bytes) == expected
    # Payload types that did not change still read across versions.
    assert v1.decode(v2.encode(_ev(t.RunFailed("r", "e")))) == _ev(t.RunFailed("r", "e"))

    # And through the module-level API the engine uses.
    assert register_writer_schema(v2.schema) == v2.fingerprint
    assert decode(new_bytes) == expected


def test_new_reader_reads_bytes_from_an_older_writer() -> None:
    old_bytes = encode(_ev(t.NodeCompleted("r", "n", 1, 2, ["ü"])))
    v2 = Codec(_v2_schema(), V2_PAYLOAD_TYPES)
    with pytest.raises(CodecError, match="unknown writer schema fingerprint"):
        v2.decode(old_bytes)
    assert v2.register_writer_schema(envelope_schema()) == SCHEMA_FINGERPRINT
    assert v2.decode(old_bytes) == _ev(V2.NodeCompleted("r", "n", 1, 2, ["ü"], note=None))


def test_incompatible_writer_schema_fails_when_reading() -> None:
    # A writer without NodeCompleted.output, which the reader requires and has no default.
    schema = envelope_schema()
    record = _payload_record(schema, "NodeCompleted")
    record["fields"] = [f for f in record["fields"] if f["name"] != "output"]
    fp = register_writer_schema(schema)
    data = b"\xc3\x01" + fp + _body(schema, _raw_envelope("NodeCompleted", _NODE_COMPLETED))
    with pytest.raises(CodecError, match=f"malformed event body \\(writer schema {fp.hex()}\\)"):
        decode(data)


def test_history_directory_registers_old_writer_schemas(tmp_path: Path) -> None:
    v2 = Codec(_v2_schema(), V2_PAYLOAD_TYPES)
    (tmp_path / "v2.avsc").write_text(json.dumps(v2.schema), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    v1 = Codec(envelope_schema())
    assert codec._register_history(v1, tmp_path) == [v2.fingerprint]
    assert codec._register_history(v1, tmp_path / "missing") == []
    data = v2.encode(_ev(V2.NodeCompleted("r", "n", 0, 1, None, note="x")))
    assert v1.decode(data) == _ev(t.NodeCompleted("r", "n", 0, 1, None))


def test_event_type_is_read_without_decoding() -> None:
    from aob.events.codec import event_type
    from aob.events.types import RunCancelled

    long_id = "e" * 300  # a multi-byte varint length before the type
    data = encode(Event(long_id, "run-1", 1, RunCancelled("run-1", "why")))
    assert event_type(data) == "RunCancelled"
    assert event_type(b"not avro") is None
    assert event_type(data[:12]) is None


def test_equal_bytes_decode_once_to_one_shared_event() -> None:
    from aob.events.types import RunCancelled

    data = encode(Event("e-shared", "run-1", 1, RunCancelled("run-1", "why")))
    first = decode(bytes(data))
    assert decode(bytes(bytearray(data))) is first  # equal bytes, another object
    assert first == Event("e-shared", "run-1", 1, RunCancelled("run-1", "why"))


def test_an_event_encoded_here_decodes_to_itself_until_the_cache_forgets_it() -> None:
    from aob.events.types import RunCompleted

    written = Event("e-seeded", "run-2", 1, RunCompleted("run-2", {"pair": (1, 2)}))
    data = encode(written)
    assert decode(data) is written  # the projector reads what the coordinator wrote
    for n in range(codec._DECODED_MAX):  # other events push it out, oldest first
        encode(Event(f"e-{n}", "run-3", 1, RunCompleted("run-3", n)))
    read_later = decode(data)
    assert read_later is not written
    assert read_later.payload == RunCompleted("run-2", {"pair": [1, 2]})  # the codec's
    assert as_logged(written) == read_later


def test_the_decode_cache_is_bounded() -> None:
    from aob.events.types import RunCompleted

    for n in range(codec._DECODED_MAX + 10):
        decode(encode(Event(f"bound-{n}", "run-4", 1, RunCompleted("run-4", n))))
    assert len(codec._DECODED) == codec._DECODED_MAX
