"""Model calls through the official SDKs, streamed, in one shape for both providers.

`stream_call` yields `TextDelta`s as the answer is written and returns a `Completion` (the
tool calls asked for, the usage); a failure raises `ProviderFailure` with the outcome and a
one-line reason. The SDKs do the retrying (429 with Retry-After, 5xx, timeouts, connection
errors: AGENT_LLM_MAX_RETRIES times with backoff); what reaches us has outlived the retries.

Clients are reused per process, keyed by (kind, base URL, a digest of the key, timeout,
retries): each holds an HTTP connection pool, and the threads of the agents worker share it.
The key itself is never logged nor put in a reason.

The conversation is kept provider-neutral (a list of dicts):
    {"role": "user", "content": str}
    {"role": "assistant", "content": str, "tool_calls": [{"id", "name", "arguments"}]}
    {"role": "tool", "results": [{"id", "name", "content", "ok"}]}
and converted for each call.
"""

import hashlib
import json
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, cast

import anthropic
import httpx
import openai
from django.conf import settings

from agents.models import ModelCall
from llms.models import LLM, AccountLLM
from llms.tools import ToolSpec

Message = dict[str, Any]

# What a stream's own reads raise after the response began (the SDKs wrap only what happens
# before it). openai >= 3 talks through httpx2, anthropic through httpx.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError,)
_TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException,)
try:
    import httpx2

    _STREAM_ERRORS += (httpx2.HTTPError,)
    _TIMEOUTS += (httpx2.TimeoutException,)
except ImportError:  # pragma: no cover - older openai
    pass


@dataclass
class TextDelta:
    text: str


@dataclass
class RequestedToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class Completion:
    text: str = ""
    tool_calls: list[RequestedToolCall] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    first_token_ms: int | None = None
    stop_reason: str = ""


class ProviderFailure(Exception):
    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


_clients: dict[tuple[str, str, str, float, int], Any] = {}
_clients_lock = threading.Lock()


def client_for(config: AccountLLM) -> Any:
    llm: LLM = config.llm
    timeout = float(settings.AGENT_LLM_TIMEOUT_SECONDS)
    retries = int(settings.AGENT_LLM_MAX_RETRIES)
    digest = hashlib.sha256(config.api_key.encode()).hexdigest()
    key = (llm.kind, llm.base_url, digest, timeout, retries)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            # The SDKs' own HTTP pools allow 1000 connections (100 kept alive): every run of a
            # worker's threads may be in flight on one provider at once.
            if llm.kind == LLM.Kind.ANTHROPIC:
                client = anthropic.Anthropic(
                    base_url=llm.base_url,
                    api_key=config.api_key,
                    timeout=timeout,
                    max_retries=retries,
                )
            else:
                client = openai.OpenAI(
                    base_url=llm.base_url,
                    api_key=config.api_key,
                    timeout=timeout,
                    max_retries=retries,
                )
            _clients[key] = client
        return client


def reset_clients() -> None:
    """Forget the cached clients (tests change the timeout and retry settings)."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def stream_call(
    *,
    config: AccountLLM,
    model: str,
    system: str,
    messages: list[Message],
    tools: list[ToolSpec],
    allow_tools: bool = True,
) -> Generator[TextDelta, None, Completion]:
    """One model call, streamed. Raises ProviderFailure."""
    client = client_for(config)
    started = time.monotonic()
    try:
        if config.llm.kind == LLM.Kind.ANTHROPIC:
            completion = yield from _anthropic(
                client, model, system, messages, tools, allow_tools, started
            )
        else:
            completion = yield from _openai(
                client, model, system, messages, tools, allow_tools, started
            )
    except (openai.APIError, anthropic.APIError) as exc:
        raise classify(exc, model=model, provider=config.llm.name) from None
    except _STREAM_ERRORS as exc:
        if isinstance(exc, _TIMEOUTS):
            raise ProviderFailure(
                ModelCall.Outcome.TIMEOUT, f"{config.llm.name} stopped answering mid-reply"
            ) from None
        raise ProviderFailure(
            ModelCall.Outcome.UNAVAILABLE,
            f"the connection to {config.llm.name} broke mid-reply ({type(exc).__name__})",
        ) from None
    return completion


def _status_message(exc: Any) -> str:
    """The provider's own message, from either SDK's error body, on one short line."""
    body = getattr(exc, "body", None)
    message = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = str(inner.get("message") or "")
    message = message or str(getattr(exc, "message", "") or exc)
    return " ".join(message.split())[:200]


def classify(exc: Exception, *, model: str, provider: str) -> ProviderFailure:
    """Map an SDK error to the ModelCall outcome and a reason a person understands."""
    outcome = ModelCall.Outcome
    if isinstance(exc, (openai.AuthenticationError, anthropic.AuthenticationError)):
        return ProviderFailure(outcome.AUTH, f"{provider} rejected the API key (401)")
    if isinstance(exc, (openai.RateLimitError, anthropic.RateLimitError)):
        return ProviderFailure(
            outcome.RATE_LIMITED, f"{provider} is rate limiting this key (429), retries exhausted"
        )
    if isinstance(exc, (openai.NotFoundError, anthropic.NotFoundError)):
        return ProviderFailure(
            outcome.NOT_FOUND, f"{provider} does not know the model “{model}” (404)"
        )
    if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError)):
        return ProviderFailure(outcome.TIMEOUT, f"{provider} did not answer in time")
    if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError)):
        return ProviderFailure(outcome.UNAVAILABLE, f"could not reach {provider}")
    if isinstance(exc, (openai.BadRequestError, anthropic.BadRequestError)):
        return ProviderFailure(
            outcome.BAD_REQUEST, f"{provider} refused the request (400): {_status_message(exc)}"
        )
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 500:
        return ProviderFailure(
            outcome.UNAVAILABLE, f"{provider} failed ({status}), retries exhausted"
        )
    if isinstance(status, int):
        return ProviderFailure(
            outcome.ERROR, f"{provider} answered {status}: {_status_message(exc)}"
        )
    return ProviderFailure(outcome.ERROR, f"{provider} call failed ({type(exc).__name__})")


# --- OpenAI --------------------------------------------------------------------------------------


def _openai_messages(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for message in messages:
        if message["role"] == "user":
            converted.append({"role": "user", "content": message["content"]})
        elif message["role"] == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": message["content"] or None}
            if message.get("tool_calls"):
                entry["tool_calls"] = [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                    for call in message["tool_calls"]
                ]
            converted.append(entry)
        elif message["role"] == "tool":
            for result in message["results"]:
                converted.append(
                    {"role": "tool", "tool_call_id": result["id"], "content": result["content"]}
                )
    return converted


def _openai(
    client: openai.OpenAI,
    model: str,
    system: str,
    messages: list[Message],
    tools: list[ToolSpec],
    allow_tools: bool,
    started: float,
) -> Generator[TextDelta, None, Completion]:
    options: dict[str, Any] = {}
    if tools:
        options["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": spec.slug,
                    "description": spec.description,
                    "parameters": spec.parameters,
                },
            }
            for spec in tools
        ]
        options["tool_choice"] = "auto" if allow_tools else "none"
    # Any: the SDKs' overloads cannot pick the streamed variant through **options.
    stream: Any = cast(Any, client.chat.completions).create(
        model=model,
        messages=_openai_messages(system, messages),
        stream=True,
        stream_options={"include_usage": True},
        **options,
    )
    completion = Completion()
    parts: list[str] = []
    calls: dict[int, RequestedToolCall] = {}
    with stream:
        for chunk in stream:
            if chunk.usage is not None:
                completion.input_tokens = chunk.usage.prompt_tokens or 0
                completion.output_tokens = chunk.usage.completion_tokens or 0
            for choice in chunk.choices:
                delta = choice.delta
                if (delta.content or delta.tool_calls) and completion.first_token_ms is None:
                    completion.first_token_ms = _ms_since(started)
                if delta.content:
                    parts.append(delta.content)
                    yield TextDelta(delta.content)
                for call_delta in delta.tool_calls or []:
                    call = calls.setdefault(call_delta.index, RequestedToolCall("", "", ""))
                    if call_delta.id:
                        call.id = call_delta.id
                    if call_delta.function is not None:
                        call.name += call_delta.function.name or ""
                        call.arguments += call_delta.function.arguments or ""
                if choice.finish_reason:
                    completion.stop_reason = choice.finish_reason
    completion.text = "".join(parts)
    completion.tool_calls = [calls[index] for index in sorted(calls)]
    return completion


# --- Anthropic -----------------------------------------------------------------------------------


def _anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "user":
            converted.append({"role": "user", "content": message["content"]})
        elif message["role"] == "assistant":
            blocks: list[dict[str, Any]] = []
            if message["content"]:
                blocks.append({"type": "text", "text": message["content"]})
            for call in message.get("tool_calls") or []:
                try:
                    arguments = json.loads(call["arguments"] or "{}")
                except ValueError:
                    arguments = {}
                if not isinstance(arguments, dict):
                    arguments = {}
                blocks.append(
                    {"type": "tool_use", "id": call["id"], "name": call["name"], "input": arguments}
                )
            converted.append({"role": "assistant", "content": blocks})
        elif message["role"] == "tool":
            converted.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": result["id"],
                            "content": result["content"],
                            "is_error": not result["ok"],
                        }
                        for result in message["results"]
                    ],
                }
            )
    return converted


def _anthropic(
    client: anthropic.Anthropic,
    model: str,
    system: str,
    messages: list[Message],
    tools: list[ToolSpec],
    allow_tools: bool,
    started: float,
) -> Generator[TextDelta, None, Completion]:
    options: dict[str, Any] = {}
    if tools:
        options["tools"] = [
            {"name": spec.slug, "description": spec.description, "input_schema": spec.parameters}
            for spec in tools
        ]
        options["tool_choice"] = {"type": "auto" if allow_tools else "none"}
    stream: Any = cast(Any, client.messages).create(
        model=model,
        max_tokens=settings.AGENT_MAX_OUTPUT_TOKENS,
        system=system,
        messages=_anthropic_messages(messages),
        stream=True,
        **options,
    )
    completion = Completion()
    parts: list[str] = []
    calls: dict[int, RequestedToolCall] = {}
    with stream:
        for event in stream:
            if event.type == "message_start":
                completion.input_tokens = event.message.usage.input_tokens or 0
                completion.output_tokens = event.message.usage.output_tokens or 0
            elif event.type == "content_block_start":
                block = event.content_block
                if block.type == "tool_use":
                    calls[event.index] = RequestedToolCall(block.id, block.name, "")
            elif event.type == "content_block_delta":
                if completion.first_token_ms is None:
                    completion.first_token_ms = _ms_since(started)
                delta = event.delta
                if delta.type == "text_delta":
                    parts.append(delta.text)
                    yield TextDelta(delta.text)
                elif delta.type == "input_json_delta" and event.index in calls:
                    calls[event.index].arguments += delta.partial_json
            elif event.type == "message_delta":
                completion.output_tokens = event.usage.output_tokens or completion.output_tokens
                completion.stop_reason = event.delta.stop_reason or ""
    completion.text = "".join(parts)
    completion.tool_calls = [calls[index] for index in sorted(calls)]
    return completion


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
