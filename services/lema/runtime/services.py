"""The gRPC servicers: each validates its request, runs the same stage functions the workers run, and answers.

They are coroutines on the server's event loop and stay thin: decode, hand the blocking stage call to the server's
`BlockingPool`, encode. Concurrent calls therefore reach an LLM backend concurrently (and share its batches).
Bad input is INVALID_ARGUMENT with the field named ("items[3].task: must be one of ..."); a call whose deadline has
already passed is DEADLINE_EXCEEDED before any LLM work starts.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any, TypeVar, cast, get_args

import grpc
from pydantic import ValidationError

from lema.checker import CheckItem, CheckResult, extract_answer
from lema.config import LemaSettings, SampleSettings
from lema.llm.base import LLMError
from lema.pipeline import Resources
from lema.records import Attempt, Question, ReasoningPath, Task, stable_id
from lema.runtime import metrics
from lema.runtime.grpc_server import BlockingPool, Context, Registry, ServiceBinding
from lema.runtime.settings import Service
from lema.runtime.wire import WireError, message_fields, to_message, validation_summary
from lema.stages.correct import correct_attempts
from lema.stages.evolve import QuestionIndex, evolve_questions
from lema.stages.sample import sample_questions
from lema.stages.verify import verify_corrections
from lema.v1 import (
    checker_pb2,
    checker_pb2_grpc,
    corrector_pb2,
    corrector_pb2_grpc,
    evolver_pb2,
    evolver_pb2_grpc,
    records_pb2,
    sampler_pb2,
    sampler_pb2_grpc,
)

TASKS: tuple[str, ...] = get_args(Task)
CHECK_CHUNK = 64
"""CheckBatch checks this many items at a time, and stops between chunks once the caller's deadline has passed."""
INLINE_CHECK_CHARS = 16_384
"""A `Check` of a response up to this long is decided on the event loop when no symbolic check is needed (tens of
microseconds); longer ones, whose answer extraction takes longer, go to the blocking threads."""
CLIENT_MODEL = "client"
"""The `model` of a wrong solution a client sends for correction."""


class InvalidArgument(ValueError):
    """A request field is missing or wrong; the message starts with the field's name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")


def _required(value: str, field: str) -> str:
    if not value.strip():
        raise InvalidArgument(field, "required, got an empty string")
    return value


def _task(value: str, field: str) -> Task:
    if value not in TASKS:
        raise InvalidArgument(field, f"must be one of {', '.join(TASKS)}, got {value!r}")
    return cast(Task, value)


async def _ensure_time_left(context: Context) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed; the remaining work was not started"
        )
    if context.cancelled():
        await context.abort(grpc.StatusCode.CANCELLED, "the caller cancelled the call")


CALLER_ERRORS = (InvalidArgument, WireError, LLMError)


async def _abort(context: Context, exc: Exception) -> None:
    """Request errors are INVALID_ARGUMENT naming the field, LLM failures UNAVAILABLE (worth a retry)."""
    if isinstance(exc, LLMError):
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the LLM backend failed: {exc}")
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


F = TypeVar("F", bound=Callable[..., Any])


def rpc(method: F) -> F:
    """A servicer method (coroutine, or async generator for a server-streaming call) that starts no work past the
    deadline and answers errors with `_abort`'s status codes."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self: Any, request: Any, context: Context) -> AsyncIterator[Any]:
            await _ensure_time_left(context)
            try:
                async for response in method(self, request, context):
                    yield response
            except CALLER_ERRORS as exc:
                await _abort(context, exc)

        return cast(F, streaming)

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Context) -> Any:
        await _ensure_time_left(context)
        try:
            return await method(self, request, context)
        except CALLER_ERRORS as exc:
            await _abort(context, exc)

    return cast(F, unary)


VERDICTS = {True: metrics.CHECKER_VERDICTS.labels("correct"), False: metrics.CHECKER_VERDICTS.labels("wrong")}


def _check_response(result: CheckResult) -> checker_pb2.CheckResponse:
    VERDICTS[result.correct].inc()
    return checker_pb2.CheckResponse(correct=result.correct, predicted=result.predicted, reason=result.reason)


def _check_item(request: checker_pb2.CheckRequest, where: str) -> CheckItem:
    return CheckItem(
        response=request.response,
        gold=_required(request.gold, f"{where}gold"),
        task=_task(request.task, f"{where}task"),
        choices=tuple(request.choices),
    )


class CheckerServicer(checker_pb2_grpc.CheckerServiceServicer):
    def __init__(self, resources: Resources, blocking: BlockingPool) -> None:
        self.resources, self.blocking = resources, blocking

    @rpc
    async def Check(self, request: checker_pb2.CheckRequest, context: Context) -> checker_pb2.CheckResponse:
        item = _check_item(request, "")
        checker = self.resources.checker
        result = checker.check_fast(item) if len(item.response) <= INLINE_CHECK_CHARS else None
        if result is None:
            result = await self.blocking.run(context, checker.check, item.response, item.gold, item.task, item.choices)
        return _check_response(result)

    @rpc
    async def CheckBatch(
        self, request: checker_pb2.CheckBatchRequest, context: Context
    ) -> checker_pb2.CheckBatchResponse:
        items = [_check_item(item, f"items[{i}].") for i, item in enumerate(request.items)]
        results: list[CheckResult] = []
        for start in range(0, len(items), CHECK_CHUNK):  # a caller that gave up stops the work between chunks
            await _ensure_time_left(context)
            results += await self.blocking.run(
                context, self.resources.checker.check_batch, items[start : start + CHECK_CHUNK]
            )
        return checker_pb2.CheckBatchResponse(results=[_check_response(r) for r in results])


class SamplerServicer(sampler_pb2_grpc.SamplerServiceServicer):
    def __init__(self, settings: LemaSettings, resources: Resources, blocking: BlockingPool) -> None:
        self.settings, self.resources, self.blocking = settings, resources, blocking

    @rpc
    async def Sample(
        self, request: sampler_pb2.SampleRequest, context: Context
    ) -> AsyncIterator[records_pb2.ReasoningPath]:
        """Streams each model's samples as soon as that model has answered."""
        task = _task(request.task, "task")
        question = Question.create(
            _required(request.question, "question"), "", task, source="grpc", choices=tuple(request.choices)
        )
        models = list(request.models) or list(self.settings.sample.models)
        unknown = sorted(set(models) - set(self.settings.sample.models))
        if unknown:
            raise InvalidArgument(
                "models", f"{unknown} not served here; choose from {list(self.settings.sample.models)}"
            )
        per_model = self.settings.sample.samples_per_model
        if request.HasField("samples_per_model"):
            if request.samples_per_model <= 0:
                raise InvalidArgument("samples_per_model", f"must be positive, got {request.samples_per_model}")
            per_model = request.samples_per_model
        settings = self.settings.sample.model_copy(update={"samples_per_model": per_model})
        for model in models:
            await _ensure_time_left(context)
            try:
                attempts = await self.blocking.run(context, self._sample, question, model, settings)
            except LLMError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"the LLM backend {model!r} failed: {exc}")
            for attempt in attempts:
                yield to_message(attempt.path, records_pb2.ReasoningPath)

    def _sample(self, question: Question, model: str, settings: SampleSettings) -> list[Attempt]:
        """The blocking part: one model's samples of the question."""
        return sample_questions([question], self.resources.llm(model), settings, self.settings.run.prompts_dir)


class CorrectorServicer(corrector_pb2_grpc.CorrectorServiceServicer):
    def __init__(self, settings: LemaSettings, resources: Resources, blocking: BlockingPool) -> None:
        self.settings, self.resources, self.blocking = settings, resources, blocking

    @rpc
    async def Correct(self, request: corrector_pb2.CorrectRequest, context: Context) -> corrector_pb2.CorrectResponse:
        text = _required(request.question, "question")
        solution = _required(request.wrong_solution, "wrong_solution")
        task = _task(request.task, "task")
        gold = _required(request.gold, "gold") if request.HasField("gold") else None
        choices = tuple(request.choices)
        question = Question.create(text, gold or "", task, source="grpc", choices=choices)
        path = ReasoningPath(
            id=stable_id("p", question.id, CLIENT_MODEL, solution),
            question_id=question.id,
            model=CLIENT_MODEL,
            sample_index=0,
            prompt_version=CLIENT_MODEL,
            text=solution,
            answer=extract_answer(solution, task, choices).answer,
            verdict="wrong",
        )
        return await self.blocking.run(context, self._correct, Attempt(question=question, path=path), gold)

    def _correct(self, attempt: Attempt, gold: str | None) -> corrector_pb2.CorrectResponse:
        """The blocking part: generate the correction, then verify it against `gold` when there is one."""
        settings = self.settings.correct
        if gold is None:  # nothing to show the corrector
            settings = settings.model_copy(update={"show_gold": False})
        backend = self.resources.llm(settings.model)
        corrected, drops = correct_attempts([attempt], backend, settings, self.settings.run.prompts_dir)
        if drops:
            metrics.DROPS.labels(drops[0].stage, drops[0].reason).inc()
            return corrector_pb2.CorrectResponse(dropped=to_message(drops[0], records_pb2.Drop))
        correction = corrected[0].correction
        if gold is None:
            correction = correction.model_copy(update={"verify_reason": "no_gold_given"})
        else:
            verified, rejected = verify_corrections(corrected, self.resources.checker, show_gold=settings.show_gold)
            if verified:
                correction = verified[0].correction
            else:
                correction = correction.model_copy(update={"verify_reason": rejected[0].detail})
            metrics.CORRECTIONS.labels("verified" if correction.verified else "rejected").inc()
        return corrector_pb2.CorrectResponse(correction=to_message(correction, records_pb2.Correction))


class EvolverServicer(evolver_pb2_grpc.EvolverServiceServicer):
    def __init__(self, settings: LemaSettings, resources: Resources, blocking: BlockingPool) -> None:
        self.settings, self.resources, self.blocking = settings, resources, blocking

    @rpc
    async def Evolve(self, request: evolver_pb2.EvolveRequest, context: Context) -> evolver_pb2.EvolveResponse:
        if not request.HasField("seed"):
            raise InvalidArgument("seed", "required")
        return await self.blocking.run(context, self._evolve, _seed_question(request.seed))

    def _evolve(self, seed: Question) -> evolver_pb2.EvolveResponse:
        """The blocking part: evolve the seed with the configured LLMs."""
        settings = self.settings.evolve
        index = QuestionIndex(settings.near_duplicate_threshold)  # per call: the answer depends on the seed alone
        index.add(seed)
        voters = [self.resources.llm(m) for m in (settings.answer_models or self.settings.sample.models)]
        questions, drops = evolve_questions(
            [seed], self.resources.llm(settings.model), voters, index, settings, self.settings.run.prompts_dir
        )
        return evolver_pb2.EvolveResponse(
            questions=[to_message(q, records_pb2.Question) for q in questions],
            drops=[to_message(d, records_pb2.Drop) for d in drops],
        )


def _seed_question(message: records_pb2.Question) -> Question:
    """The seed as a record; a client may leave out `id` (derived from the text) and `source` ('grpc')."""
    fields = message_fields(message, Question)
    fields.setdefault("source", "grpc")
    if "id" not in fields and isinstance(fields.get("text"), str) and fields.get("task") in TASKS:
        fields["id"] = Question.make_id(fields["text"], fields["task"], tuple(fields.get("choices", ())))
    try:
        return Question.model_validate(fields)
    except ValidationError as exc:
        raise WireError(validation_summary(exc, "seed")) from None


S = TypeVar("S")


def _binding(
    module: ModuleType, add: Callable[[S, Registry], None], servicer: Callable[[BlockingPool], S]
) -> ServiceBinding:
    (descriptor,) = module.DESCRIPTOR.services_by_name.values()
    return ServiceBinding(descriptor.full_name, lambda server, blocking: add(servicer(blocking), server))


def service_bindings(service: Service, settings: LemaSettings, resources: Resources) -> list[ServiceBinding]:
    """The gRPC service `service` serves, if any (the dataset writer serves health only)."""
    match service:
        case "checker":
            add_checker = checker_pb2_grpc.add_CheckerServiceServicer_to_server
            return [_binding(checker_pb2, add_checker, functools.partial(CheckerServicer, resources))]
        case "sampler":
            add_sampler = sampler_pb2_grpc.add_SamplerServiceServicer_to_server
            return [_binding(sampler_pb2, add_sampler, functools.partial(SamplerServicer, settings, resources))]
        case "corrector":
            add_corrector = corrector_pb2_grpc.add_CorrectorServiceServicer_to_server
            return [_binding(corrector_pb2, add_corrector, functools.partial(CorrectorServicer, settings, resources))]
        case "evolver":
            add_evolver = evolver_pb2_grpc.add_EvolverServiceServicer_to_server
            return [_binding(evolver_pb2, add_evolver, functools.partial(EvolverServicer, settings, resources))]
        case _:
            return []
