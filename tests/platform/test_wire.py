"""The wire format: records <-> protobuf, Kafka envelopes, and the generated code matching the protos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from platform_testing import REPO

from lema.records import SCHEMA_VERSION, Attempt, CorrectedAttempt, Correction, Drop, Question, ReasoningPath
from lema.runtime.wire import ENVELOPE_FIELDS, WireError, decode, encode, from_message, to_message
from lema.v1 import checker_pb2, corrector_pb2, evolver_pb2, records_pb2, sampler_pb2

QUESTION = Question.create("Tom has 3 apples and eats 1. How many are left?", "2", "gsm8k", "test.jsonl:1")
PATH = ReasoningPath(
    id="p-1",
    question_id=QUESTION.id,
    model="smollm2",
    sample_index=0,
    prompt_version="sample-gsm8k@v1",
    text="Step 1: 3 - 1 = 3.\nThe answer is 3",
    answer="3",
    verdict="wrong",
    verdict_reason="numeric_mismatch",
)
CORRECTION = Correction(
    id="c-1",
    path_id=PATH.id,
    question_id=QUESTION.id,
    incorrect_step=1,
    explanation="3 - 1 is 2.",
    corrected_solution="Step 1: 3 - 1 = 2.\nThe answer is 2",
    answer="2",
    verified=True,
    verify_reason="numeric_equal",
    corrector_model="smollm2",
    prompt_version="correct-gsm8k@v1",
)
RECORDS = [
    QUESTION,
    Question.create("Pick one", "B", "mcq", "mcq.jsonl:4", choices=("1", "2"), parent_id="q-0", round=2),
    Attempt(question=QUESTION, path=PATH),
    Attempt(question=QUESTION, path=PATH.model_copy(update={"answer": None, "verdict": None, "sample_index": 0})),
    CorrectedAttempt(question=QUESTION, path=PATH, correction=CORRECTION),
    CorrectedAttempt(question=QUESTION, path=PATH, correction=CORRECTION.model_copy(update={"answer": None})),
    Drop(stage="correct", reason="no_incorrect_step", record_id="c-2", detail=""),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_bus_record_survives_the_envelope(record: Question) -> None:
    assert decode(encode(record)) == record


def test_zero_values_are_values_not_defaults() -> None:
    """Explicit presence: round 0, sample_index 0, verified False and "" all come back as sent."""
    path = PATH.model_copy(update={"sample_index": 0, "text": "", "verdict_reason": ""})
    correction = CORRECTION.model_copy(update={"verified": False, "incorrect_step": 0})
    item = CorrectedAttempt(question=QUESTION, path=path, correction=correction)
    assert decode(encode(item)) == item


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Question, records_pb2.Question),
        (ReasoningPath, records_pb2.ReasoningPath),
        (Correction, records_pb2.Correction),
        (Attempt, records_pb2.Attempt),
        (CorrectedAttempt, records_pb2.CorrectedAttempt),
        (Drop, records_pb2.Drop),
    ],
)
def test_proto_fields_are_the_record_fields(model: type, message: type) -> None:
    """The generic conversion relies on it: a field added to a record must be added to its message too."""
    assert set(message.DESCRIPTOR.fields_by_name) == set(model.model_fields)


def test_every_bus_record_type_has_an_envelope_field() -> None:
    oneof = records_pb2.Envelope.DESCRIPTOR.oneofs_by_name["record"]
    assert sorted(ENVELOPE_FIELDS.values()) == sorted(f.name for f in oneof.fields)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"", "empty message value"),
        (b"\xff\xff\xff not protobuf", "not a lema.v1.Envelope"),
        (records_pb2.Envelope(schema_version=SCHEMA_VERSION).SerializeToString(), "Envelope.record: no record set"),
        (
            records_pb2.Envelope(schema_version=SCHEMA_VERSION + 1, drop={"stage": "s"}).SerializeToString(),
            f"Envelope.schema_version: {SCHEMA_VERSION + 1} is not supported",
        ),
        (
            records_pb2.Envelope(schema_version=SCHEMA_VERSION, attempt={"path": {"id": "p"}}).SerializeToString(),
            "Attempt.question: Field required",
        ),
        (
            records_pb2.Envelope(
                schema_version=SCHEMA_VERSION,
                question=records_pb2.Question(id="q", text="t", gold="1", task="chess", source="s"),
            ).SerializeToString(),
            "Question.task: Input should be 'gsm8k', 'math' or 'mcq'",
        ),
    ],
    ids=["empty", "garbage", "no-record", "future-version", "missing-field", "bad-task"],
)
def test_malformed_values_fail_with_the_reason(value: bytes, problem: str) -> None:
    with pytest.raises(WireError) as raised:
        decode(value)
    assert problem in str(raised.value)


def test_from_message_names_nested_fields() -> None:
    message = records_pb2.CorrectedAttempt(
        question=to_message(QUESTION, records_pb2.Question), path=records_pb2.ReasoningPath(id="p")
    )
    with pytest.raises(WireError) as raised:
        from_message(message, CorrectedAttempt)
    assert "CorrectedAttempt.path.question_id: Field required" in str(raised.value)
    assert "CorrectedAttempt.correction: Field required" in str(raised.value)


def _without_json_names(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """protoc records derived json_name values in descriptor sets but not in generated code; they carry nothing."""
    for message in file.message_type:
        for field in message.field:
            field.ClearField("json_name")
    return file


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    """The committed `lema.v1` modules were generated from the current protos (run scripts/gen_protos.py)."""
    descriptor_set = tmp_path / "protos.pb"
    protos = sorted(p.relative_to(REPO / "protos").as_posix() for p in (REPO / "protos").rglob("*.proto"))
    protoc = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{REPO / 'protos'}",
        f"--descriptor_set_out={descriptor_set}",
    ]
    subprocess.run([*protoc, *protos], check=True)
    compiled = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    committed = {
        module.DESCRIPTOR.name: descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        for module in (records_pb2, checker_pb2, corrector_pb2, evolver_pb2, sampler_pb2)
    }
    assert {f.name: _without_json_names(f) for f in compiled.file} == committed
