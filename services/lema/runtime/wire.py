"""Records on the wire: pydantic records <-> the protobuf messages of `protos/lema/v1`, and Kafka message values.

Proto fields carry the same names as the record fields and every scalar has explicit presence, so one generic
conversion serves every record: absent fields take the model's default, and the pydantic model does all validation.
A malformed message therefore fails with an error naming the field, whichever runtime received it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from itertools import compress
from operator import attrgetter
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
        # The model's validator itself: `model_validate` adds a call layer that costs a fifth of a small record's
        # validation, once per Kafka message.
        fields = message_fields(message, model_cls)
        return model_cls.__pydantic_validator__.validate_python(fields)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise WireError(validation_summary(exc, where or model_cls.__name__)) from None


def message_fields(message: ProtoMessage, model_cls: type[BaseModel]) -> dict[str, Any]:
    """The fields `message` carries, as input for `model_cls`.

    An absent field is left out, so the model applies its default or reports it missing; only a field the model
    requires but allows to be None (`answer: str | None`) becomes None, because that is what its absence encodes.
    """
    layout = _layout(message.DESCRIPTOR, model_cls)
    out: dict[str, Any] = {}
    if layout.scalars:  # read and tested in C loops: a decode's cost is mostly per field
        sent = map(message.HasField, layout.scalars)
        out.update(compress(zip(layout.scalars, layout.read_scalars(message), strict=True), sent))
    for name, nested in layout.messages:
        if message.HasField(name):
            out[name] = message_fields(getattr(message, name), nested)
    for name in layout.repeated:
        values = getattr(message, name)
        if values:
            out[name] = list(values)
    for name in layout.implicit:  # no presence: present when not the default, as protobuf serialises it
        value = getattr(message, name)
        if value:
            out[name] = value
    for name in layout.absent_means_none:
        out.setdefault(name, None)
    return out


class _Layout(NamedTuple):
    """How to read one message type into one model, worked out once per pair of types."""

    scalars: tuple[str, ...]
    """Scalars with presence (`optional`): `HasField` says whether each was sent."""
    read_scalars: Callable[[ProtoMessage], tuple[Any, ...]]
    messages: tuple[tuple[str, type[BaseModel]], ...]
    """Message fields, with the model each is read into."""
    repeated: tuple[str, ...]
    implicit: tuple[str, ...]
    """Scalars without presence."""
    absent_means_none: tuple[str, ...]


@functools.cache
def _layout(descriptor: Descriptor, model_cls: type[BaseModel]) -> _Layout:
    scalars, messages, repeated, implicit = [], [], [], []
    for field in descriptor.fields:
        if field.is_repeated:
            repeated.append(field.name)
        elif field.message_type is not None:
            messages.append((field.name, _nested_model(model_cls, field.name)))
        elif field.has_presence:
            scalars.append(field.name)
        else:
            implicit.append(field.name)
    read = attrgetter(*scalars) if len(scalars) > 1 else lambda message: (getattr(message, scalars[0]),)
    return _Layout(
        tuple(scalars), read, tuple(messages), tuple(repeated), tuple(implicit), _absent_means_none(model_cls)
    )


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
    return envelope.SerializeToString()  # deterministic as it is: no record has a map field


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
