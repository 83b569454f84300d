"""The agent runner: executes `agent` nodes (topic `aob.tasks.agent`) with an LLM and tools.

One node attempt is a conversation: the stable prefix (system prompt, tool
schemas), the node's context, its prompt; then rounds of "the model calls tools,
the runner answers with their results" until the model answers without a tool call.
That answer is the node's output.

Bounded: at most `max_rounds` tool-call rounds, `max_tokens` tokens (prompt plus
completion, summed over calls, from the usage blocks) and `max_wall_ms` of wall
time; crossing one fails the node, without retries, saying which. Every attempt
appends `AgentUsageRecorded` (calls, tokens, cached tokens, its tenant, and its cost
at the operator's prices) before its outcome. Run and tenant budgets are enforced
before and after every LLM call (`spending`, docs/budgets.md).
Outputs larger than the blob threshold go to the content-addressed store; the event
carries `{"$blob": ref, "bytes": n}` instead.

LLM failures the SDK could not retry away fail the node: retryable for 408, 409,
429, 5xx and connection errors (the node's retry policy decides), final otherwise.
Nodes reach only the endpoints the operator configured (see `config`); any but the
default goes through the SSRF guard, and a refusal is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai

from aob.events.blobs import BlobStore
from aob.events.codec import encode
from aob.events.log.port import Append
from aob.events.types import RUNS_TOPIC, AgentUsageRecorded, Json, NodeScheduled
from aob.projections.usage.budgets import BudgetError as InvalidBudget
from aob.projections.usage.pricing import price_of
from aob.workers.agent.config import DEFAULT_TENANT, AgentConfig, ConfigError, agent_config
from aob.workers.agent.llm import LiveOutput, LivePublisher, LlmClients, Usage
from aob.workers.agent.prompt import SYSTEM_PROMPT, TOOLS, node_context
from aob.workers.agent.run_events import agent_event
from aob.workers.agent.spending import AttemptBudget, cost_nano
from aob.workers.agent.tools import AgentFailure, AgentServices, ToolBox
from aob.workers.host import NodeError, NodeType
from aob.workers.http.config import BudgetError, SandboxBusy, render
from aob.workers.http.config import ConfigError as TemplateError
from aob.workers.http.guard import Blocked
from aob.workers.http.outbound import GuardRefused
from aob.workers.http.resolver import ResolveError

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({408, 409, 429})
# What AgentUsageRecorded keeps of each tool call: the event stays small whatever the
# model does (the count of calls is kept whole).
_RECORDED_CALLS = 100
_RECORDED_TEXT = 1000


@dataclass
class _Conversation:
    messages: list[dict[str, Any]]
    usage: Usage = field(default_factory=Usage)
    rounds: int = 0
    tool_calls: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)  # recorded, see above
    live: LiveOutput | None = None  # the attempt's live output (deltas), if published
    budget: AttemptBudget | None = None  # None: no run or tenant budget applies
    wall: asyncio.Timeout | None = None  # the attempt's max_wall_ms

    def record_call(self, name: str, arguments: str, result: str, elapsed_s: float) -> None:
        self.tool_calls += 1
        if len(self.calls) < _RECORDED_CALLS:
            self.calls.append(
                {
                    "name": name[:_RECORDED_TEXT],
                    "arguments": _cut(arguments),
                    "result": _cut(result),
                    "elapsed_ms": round(elapsed_s * 1000, 3),
                }
            )


def _cut(text: str) -> str:
    return text if len(text) <= _RECORDED_TEXT else text[:_RECORDED_TEXT] + "…"


class AgentRunner:
    """Executes agent nodes. Close with `aclose` (the shared LLM connection pool)."""

    def __init__(
        self,
        services: AgentServices,
        *,
        clients: LlmClients | None = None,
        blobs: BlobStore | None = None,
        concurrency: int = 16,
        live: LivePublisher | None = None,
    ) -> None:
        self.services = services
        # Where tokens and tool steps stream while a node runs (docs/streaming.md).
        self.live = live
        self.clients = clients or LlmClients()
        self.blobs = blobs
        self.concurrency = concurrency
        # Time spent awaiting the LLM, for the benchmark's per-decision overhead.
        self.llm_seconds = 0.0
        self.decisions = 0

    def node_type(self) -> NodeType:
        return NodeType("agent", self.handle, announce_start=True, concurrency=self.concurrency)

    async def aclose(self) -> None:
        await self.clients.aclose()
        close = getattr(self.services.fetch, "aclose", None)
        if close is not None:
            await close()

    async def handle(self, task: NodeScheduled) -> Json:
        """Run one agent node attempt; its output, or NodeError."""
        config = await self._config(task)
        loop = asyncio.get_running_loop()
        tools = ToolBox(self.services, task, config, loop.time() + config.max_wall_ms / 1000)
        conversation = _Conversation(_opening(config))
        conversation.budget = await self._budget(task, config)
        if self.live is not None:
            conversation.live = self.live.attempt(
                task.run_id, task.node_id, task.iteration, task.attempt
            )
        outcome = "failed"
        try:
            async with asyncio.timeout(config.max_wall_ms / 1000) as wall:
                conversation.wall = wall
                answer = await self._converse(conversation, config, tools)
            outcome = "completed"
        except TimeoutError:
            raise AgentFailure(
                f"agent exceeded its wall time of {config.max_wall_ms} ms "
                f"(after {conversation.rounds} tool-call rounds)"
            ) from None
        except openai.APIStatusError as error:
            raise _llm_status_error(error, config) from None
        except (Blocked, GuardRefused) as error:
            raise _blocked(error, config) from None
        except ResolveError as error:
            raise NodeError(
                f"cannot reach the LLM endpoint {config.endpoint.base_url}: {error}", retryable=True
            ) from None
        except openai.APIConnectionError as error:
            if isinstance(error.__cause__, GuardRefused):  # the transport's own check
                raise _blocked(error.__cause__, config) from None
            raise NodeError(
                f"cannot reach the LLM endpoint {config.endpoint.base_url}: {error}", retryable=True
            ) from None
        finally:
            recorded = await self._record_usage(task, config, conversation, outcome)
            if conversation.budget is not None:
                conversation.budget.close(recorded)
        output = {
            "answer": answer,
            "rounds": conversation.rounds,
            "tool_calls": conversation.tool_calls,
            "usage": conversation.usage.as_dict(),
            "patches": tools.patches,
        }
        return await self._stored_if_large(output)

    async def _config(self, task: NodeScheduled) -> AgentConfig:
        tenant = task.tenant or DEFAULT_TENANT
        try:
            config = agent_config(task.config, self.services.defaults, tenant)
            prompt = await render(config.prompt, task.input, "config.prompt")
            instructions = await render(config.instructions, task.input, "config.instructions")
        except BudgetError as error:
            raise NodeError(
                f"agent node: {error}",
                retryable=False,
                not_retried="a template over its jq budget is over it again",
            ) from None
        except SandboxBusy as error:
            raise NodeError(f"agent node: {error}", retryable=True) from None
        except (ConfigError, TemplateError) as error:
            raise NodeError(
                f"agent node config: {error}",
                retryable=False,
                not_retried="the node's config is invalid",
            ) from None
        return _with_texts(config, _text(prompt), _text(instructions))

    async def _converse(
        self, conversation: _Conversation, config: AgentConfig, tools: ToolBox
    ) -> Json:
        task = tools.task
        definition = None
        if "patch_workflow" in tools.available:
            definition = await tools.current_definition()
        conversation.messages[1]["content"] = node_context(
            run_id=task.run_id,
            node_id=task.node_id,
            available=tools.available,
            inputs=task.input,
            definition=definition,
            instructions=config.instructions,
        )
        while True:
            message = await self._decide(conversation, config, tools)
            calls = message.tool_calls or []
            if not calls:
                answer, retry_note = _answer(message.content, config.output)
                if retry_note is None:
                    return answer
                self._next_round(conversation, config)
                conversation.messages.append({"role": "assistant", "content": message.content})
                conversation.messages.append({"role": "user", "content": retry_note})
                continue
            self._next_round(conversation, config)
            conversation.messages.append(_assistant_message(message.content, calls))
            for call in calls:
                function = getattr(call, "function", None)
                started = time.perf_counter()
                if function is None:  # a custom (non-function) tool call: nothing we offer
                    name, arguments = "(not a function)", ""
                    result = json.dumps({"error": "only function tools are available"})
                else:
                    name, arguments = str(function.name), str(function.arguments or "")
                    result = await tools.call(function.name, function.arguments)
                elapsed = time.perf_counter() - started
                conversation.record_call(name, arguments, result, elapsed)
                if conversation.live is not None:
                    await conversation.live.tool_result(name, result, elapsed)
                conversation.messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": result}
                )

    async def _decide(
        self, conversation: _Conversation, config: AgentConfig, tools: ToolBox
    ) -> Any:
        """One LLM call: the model's next message. Enforces the token budget, and the
        run's and tenant's budgets before and after the call."""
        await self._enforce_budgets(conversation, tools, before_call=True)
        budget = config.max_tokens - conversation.usage.total_tokens
        started = time.perf_counter()
        try:
            completion = await self.clients.complete(
                config.endpoint,
                conversation.messages,
                TOOLS,
                max_completion_tokens=None,
                live=conversation.live,
            )
        finally:
            self.llm_seconds += time.perf_counter() - started
            self.decisions += 1
        conversation.usage.add(completion)
        if conversation.budget is not None:
            conversation.budget.spent(conversation.usage)
        if conversation.usage.total_tokens > config.max_tokens:
            raise AgentFailure(
                f"agent exceeded its token budget of {config.max_tokens} tokens "
                f"({conversation.usage.total_tokens} used in {conversation.usage.llm_calls} "
                f"LLM calls; {budget} were left before the last call)"
            )
        await self._enforce_budgets(conversation, tools, before_call=False)
        if not completion.choices:
            raise NodeError("the LLM answered with no choices", retryable=True)
        return completion.choices[0].message

    async def _budget(self, task: NodeScheduled, config: AgentConfig) -> AttemptBudget | None:
        """The run's and tenant's budgets for this attempt; None when neither applies."""
        guard = self.services.budgets
        if guard is None:
            return None
        tenant = task.tenant or DEFAULT_TENANT
        try:
            budgets = await guard.budgets_of(task.run_id, tenant)
        except LookupError as error:
            raise NodeError(f"agent node: {error}", retryable=True) from None
        except InvalidBudget as error:
            raise NodeError(
                f"agent node: the run's {error}",
                retryable=False,
                not_retried="the run's budget is invalid",
            ) from None
        if not budgets.any:
            return None
        run_policy = budgets.run.on_exceeded if budgets.run is not None else "fail"
        return AttemptBudget(
            guard,
            budgets,
            guard.ledger.open(task.run_id, tenant),
            price_of(self.services.defaults.prices, config.endpoint.model),
            config.endpoint.model,
            config.on_budget_exceeded or run_policy,
        )

    async def _enforce_budgets(
        self, conversation: _Conversation, tools: ToolBox, *, before_call: bool
    ) -> None:
        if conversation.budget is None:
            return

        @contextlib.contextmanager
        def paused(seconds: float) -> Iterator[None]:
            """The wall-time clocks stand still while a person decides."""
            wall, loop = conversation.wall, asyncio.get_running_loop()
            started, when = loop.time(), wall.when() if wall is not None else None
            if wall is not None and when is not None:
                wall.reschedule(when + seconds)
            try:
                yield
            finally:
                waited = loop.time() - started
                if wall is not None and when is not None:
                    wall.reschedule(when + waited)
                tools.deadline += waited

        await conversation.budget.enforce(
            self.services.log, tools.task, paused, before_call=before_call
        )

    def _next_round(self, conversation: _Conversation, config: AgentConfig) -> None:
        if conversation.rounds >= config.max_rounds:
            raise AgentFailure(
                f"agent exceeded its limit of {config.max_rounds} tool-call rounds "
                "without a final answer"
            )
        conversation.rounds += 1

    async def _record_usage(
        self, task: NodeScheduled, config: AgentConfig, conversation: _Conversation, outcome: str
    ) -> str | None:
        """Appends the attempt's AgentUsageRecorded with its cost at today's prices
        (recorded, so history stays right when prices change); returns its event id,
        None when it could not be appended."""
        usage = conversation.usage
        price = price_of(self.services.defaults.prices, config.endpoint.model)
        payload = AgentUsageRecorded(
            task.run_id,
            task.node_id,
            task.iteration,
            task.attempt,
            config.endpoint.model,
            usage.llm_calls,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            cached_tokens=usage.cached_tokens,
            tool_calls=conversation.tool_calls,
            outcome=outcome,
            calls=conversation.calls,
            tenant=task.tenant or DEFAULT_TENANT,
            cost_nano_usd=cost_nano(usage, price),
            price=price.as_json() if price is not None else None,
        )
        event = agent_event(task, payload)
        try:
            await self.services.log.append([Append(RUNS_TOPIC, task.run_id, encode(event))])
        except Exception:  # usage is a record, not the outcome: never fail the node for it
            log.exception("cannot record the usage of node %s of run %s", task.node_id, task.run_id)
            return None
        return event.event_id

    async def _stored_if_large(self, output: dict[str, Json]) -> Json:
        if self.blobs is None:
            return output
        data = json.dumps(output["answer"], ensure_ascii=False, separators=(",", ":"))
        size = len(data.encode("utf-8"))
        if size <= self.services.defaults.blob_threshold_bytes:
            return output
        ref = await self.blobs.put(data.encode("utf-8"))
        media = "application/json"
        return {**output, "answer": {"$blob": ref, "bytes": size, "media_type": media}}


def _opening(config: AgentConfig) -> list[dict[str, Any]]:
    """The stable prefix first (cached by providers), then the node's own messages."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "system", "content": ""},  # the node context, filled in by _converse
        {"role": "user", "content": config.prompt},
    ]


def _assistant_message(content: str | None, calls: list[Any]) -> dict[str, Any]:
    """The model's tool-calling message as it goes back in the conversation."""
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in calls
            if getattr(call, "function", None) is not None
        ],
    }


def _with_texts(config: AgentConfig, prompt: str, instructions: str) -> AgentConfig:
    return AgentConfig(
        prompt=prompt,
        instructions=instructions,
        endpoint=config.endpoint,
        max_rounds=config.max_rounds,
        max_tokens=config.max_tokens,
        max_wall_ms=config.max_wall_ms,
        tools=config.tools,
        output=config.output,
        delegation_depth=config.delegation_depth,
        on_budget_exceeded=config.on_budget_exceeded,
    )


def _text(value: Json) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _answer(content: str | None, output: str) -> tuple[Json, str | None]:
    """The final answer, or (None, a note asking again) when it must be JSON and is not."""
    text = content or ""
    if output != "json":
        return text, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, (f"Your final answer must be valid JSON ({error}). Reply with the JSON only.")


def _blocked(error: Blocked | GuardRefused, config: AgentConfig) -> NodeError:
    """The guard refused the endpoint: final (the operator must allow it)."""
    blocked = error.blocked if isinstance(error, GuardRefused) else error
    return NodeError(
        f"LLM endpoint {config.endpoint.name!r}: {blocked} (AOB_HTTP_ALLOW lets an"
        " operator's endpoint on a private address through)",
        retryable=False,
        not_retried="the SSRF guard refuses this endpoint every time",
    )


def _llm_status_error(error: openai.APIStatusError, config: AgentConfig) -> NodeError:
    status = error.status_code
    retryable = status in _RETRYABLE_STATUS or status >= 500
    retries = config.endpoint.max_retries
    after = f" after {retries} retries" if retryable and retries else ""
    return NodeError(
        f"LLM endpoint {config.endpoint.base_url} answered HTTP {status}{after}: "
        f"{_provider_message(error)}",
        retryable=retryable,
        not_retried=f"HTTP {status} from the LLM endpoint is not transient",
    )


def _provider_message(error: openai.APIStatusError) -> str:
    """The provider's own message ({"error": {"message": ...}}), else the SDK's."""
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str):
            return message
    return error.message
