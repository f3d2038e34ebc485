"""Records on the wire: pydantic records <-> the protobuf messages of `protos/lema/v1`, and Kafka message values.

Proto fields carry the same names as the record fields and every scalar has explicit presence, so one generic
conversion serves every record: absent fields take the model's default, and the pydantic model does all validation.
A malformed message therefore fails with an error naming the field, whichever runtime received it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar, get_args

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from pydantic import BaseModel, ValidationError

from lema.records import SCHEMA_VERSION, Attempt, CorrectedAttempt, Drop, Question, Record
from lema.v1 import records_pb2

BusRecord = Question | Attempt | CorrectedAttempt | Drop
"""The records that travel on Kafka topics."""
ModelT = TypeVar("ModelT", bound=BaseModel)
ProtoMessageT = TypeVar("ProtoMessageT", bound=ProtoMessage)


class WireError(ValueError):
    """A message could not be decoded into a record; the text names the field or the reason."""


# The envelope's oneof field for each record type that travels on Kafka.
_RECORDS_BY_FIELD: Mapping[str, type[BusRecord]] = {
    "question": Question,
    "attempt": Attempt,
    "corrected_attempt": CorrectedAttempt,
    "drop": Drop,
}
ENVELOPE_FIELDS: Mapping[type[Record], str] = {record: field for field, record in _RECORDS_BY_FIELD.items()}


def to_message(model: BaseModel, message_cls: type[ProtoMessageT]) -> ProtoMessageT:
    """`model` as a `message_cls`; nested models become nested messages, None becomes an absent field."""
    return message_cls(**model.model_dump(exclude_none=True))  # protobuf builds nested messages from the dicts


def from_message(message: ProtoMessage, model_cls: type[ModelT], where: str = "") -> ModelT:
    """Validate `message` as a `model_cls`; raises `WireError` naming the offending field (prefixed by `where`)."""
    try:
        return model_cls.model_validate(message_fields(message, model_cls))
    except ValidationError as exc:
        raise WireError(validation_summary(exc, where or model_cls.__name__)) from None


def message_fields(message: ProtoMessage, model_cls: type[BaseModel]) -> dict[str, Any]:
    """The fields `message` carries, as input for `model_cls`.

    An absent field is left out, so the model applies its default or reports it missing; only a field the model
    requires but allows to be None (`answer: str | None`) becomes None, because that is what its absence encodes.
    """
    layout = _layout(message.DESCRIPTOR, model_cls)
    out: dict[str, Any] = {}
    has = message.HasField
    for name, kind, nested in layout.fields:
        if kind is _Kind.REPEATED:
            values = getattr(message, name)
            if values:
                out[name] = list(values)
        elif kind is _Kind.IMPLICIT:  # no presence: present when not the default, as protobuf serialises it
            value = getattr(message, name)
            if value:
                out[name] = value
        elif has(name):
            value = getattr(message, name)
            out[name] = value if nested is None else message_fields(value, nested)
    for name in layout.absent_means_none:
        out.setdefault(name, None)
    return out


class _Kind(enum.Enum):
    PRESENCE = enum.auto()
    """A message field or an `optional` scalar: `HasField` says whether it was sent."""
    IMPLICIT = enum.auto()
    REPEATED = enum.auto()


class _Layout(NamedTuple):
    """How to read one message type into one model: its fields (name, kind, the model of a nested message) and
    the fields whose absence means None."""

    fields: tuple[tuple[str, _Kind, type[BaseModel] | None], ...]
    absent_means_none: tuple[str, ...]


@functools.cache
def _layout(descriptor: Descriptor, model_cls: type[BaseModel]) -> _Layout:
    """Worked out once per type: a decode then asks for each field by name (cheaper than listing the fields set)."""
    fields: list[tuple[str, _Kind, type[BaseModel] | None]] = []
    for field in descriptor.fields:
        if field.is_repeated:
            fields.append((field.name, _Kind.REPEATED, None))
        elif field.message_type is not None:
            fields.append((field.name, _Kind.PRESENCE, _nested_model(model_cls, field.name)))
        else:
            fields.append((field.name, _Kind.PRESENCE if field.has_presence else _Kind.IMPLICIT, None))
    return _Layout(tuple(fields), _absent_means_none(model_cls))


@functools.cache
def _nested_model(model_cls: type[BaseModel], name: str) -> type[BaseModel]:
    info = model_cls.model_fields.get(name)
    nested = info.annotation if info is not None else None
    return nested if isinstance(nested, type) and issubclass(nested, BaseModel) else BaseModel


@functools.cache
def _absent_means_none(model_cls: type[BaseModel]) -> tuple[str, ...]:
    return tuple(
        name
        for name, info in model_cls.model_fields.items()
        if info.is_required() and type(None) in get_args(info.annotation)
    )


def validation_summary(exc: ValidationError, where: str) -> str:
    """'Question.gold: Field required; ...': every problem with its dotted field path."""
    return "; ".join(f"{'.'.join([where, *map(str, err['loc'])])}: {err['msg']}" for err in exc.errors())


def encode(record: Record) -> bytes:
    """The Kafka message value for `record`: an `Envelope` stamped with the current schema version."""
    field = ENVELOPE_FIELDS.get(type(record))
    if field is None:
        raise TypeError(f"{type(record).__name__} records do not travel on the bus")
    payload: dict[str, Any] = {field: record.model_dump(exclude_none=True)}
    envelope = records_pb2.Envelope(schema_version=SCHEMA_VERSION, **payload)
    return envelope.SerializeToString(deterministic=True)


def decode(value: bytes | None) -> BusRecord:
    """The record in a Kafka message value; raises `WireError` saying what is wrong with it."""
    if not value:
        raise WireError("empty message value (expected a lema.v1.Envelope)")
    try:
        envelope = records_pb2.Envelope.FromString(value)
    except DecodeError as exc:
        raise WireError(f"not a lema.v1.Envelope: {exc}") from None
    if not 1 <= envelope.schema_version <= SCHEMA_VERSION:
        raise WireError(f"Envelope.schema_version: {envelope.schema_version} is not supported (1..{SCHEMA_VERSION})")
    field = envelope.WhichOneof("record")
    if field is None:
        raise WireError("Envelope.record: no record set")
    model_cls = _RECORDS_BY_FIELD[field]
    return from_message(getattr(envelope, field), model_cls, where=model_cls.__name__)
