"""Model calls through the official SDKs, streamed, in one shape for both providers.

`stream_call` yields `TextDelta`s as the answer is written and returns a `Completion` (the
tool calls asked for, the usage); a failure raises `ProviderFailure` with the outcome and a
one-line reason. The SDKs do the retrying (429 with Retry-After, 5xx, timeouts, connection
errors: AGENT_LLM_MAX_RETRIES times with backoff); what reaches us has outlived the retries.

Clients are reused per process, keyed by (kind, base URL, a digest of the key, timeout,
retries): each holds an HTTP connection pool, and the threads of the agents worker share it.
The key itself is never logged nor put in a reason.

The SDKs build and send the request, authenticate, retry and turn an error status into their
exceptions; the streamed body is read through their raw streaming response
(`with_streaming_response`) and its events parsed here with json.loads. Why: the SDKs build a
pydantic model per event, 96 us per chunk for openai's ChatCompletionChunk (18 us for an
anthropic event) against 3 us for json.loads, measured; an answer of a few hundred chunks cost
more CPU in models than the rest of the run (benchmarks/agent_runs.py, worker_cpu_ms_per_run).

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
from collections.abc import Generator, Iterator
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
    except _StreamError as exc:
        raise ProviderFailure(
            ModelCall.Outcome.UNAVAILABLE if exc.overloaded else ModelCall.Outcome.ERROR,
            f"{config.llm.name} failed mid-reply: {exc.message}",
        ) from None
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
    completion = Completion()
    parts: list[str] = []
    calls: dict[int, RequestedToolCall] = {}
    # Any: the SDKs' overloads cannot pick the streamed variant through **options.
    with cast(Any, client.chat.completions).with_streaming_response.create(
        model=model,
        messages=_openai_messages(system, messages),
        stream=True,
        stream_options={"include_usage": True},
        **options,
    ) as response:
        for _, data in _events(response.iter_lines()):
            if data.startswith("[DONE]"):
                continue  # read on to the end of the body: the connection is kept
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                raise _StreamError(chunk["error"])
            usage = chunk.get("usage")
            if usage:
                completion.input_tokens = usage.get("prompt_tokens") or 0
                completion.output_tokens = usage.get("completion_tokens") or 0
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                content = delta.get("content")
                tool_deltas = delta.get("tool_calls")
                if (content or tool_deltas) and completion.first_token_ms is None:
                    completion.first_token_ms = _ms_since(started)
                if content:
                    parts.append(content)
                    yield TextDelta(content)
                for call_delta in tool_deltas or ():
                    call = calls.setdefault(
                        call_delta.get("index") or 0, RequestedToolCall("", "", "")
                    )
                    if call_delta.get("id"):
                        call.id = call_delta["id"]
                    function = call_delta.get("function")
                    if function:
                        call.name += function.get("name") or ""
                        call.arguments += function.get("arguments") or ""
                if choice.get("finish_reason"):
                    completion.stop_reason = choice["finish_reason"]
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
    completion = Completion()
    parts: list[str] = []
    calls: dict[int, RequestedToolCall] = {}
    with cast(Any, client.messages).with_streaming_response.create(
        model=model,
        max_tokens=settings.AGENT_MAX_OUTPUT_TOKENS,
        system=system,
        messages=_anthropic_messages(messages),
        stream=True,
        **options,
    ) as response:
        for kind, data in _events(response.iter_lines()):
            if kind not in _ANTHROPIC_EVENTS:
                continue  # ping, and events added later
            event = json.loads(data)
            if kind == "error":
                raise _StreamError(event.get("error") if isinstance(event, dict) else event)
            if kind == "message_start":
                usage = event["message"].get("usage") or {}
                completion.input_tokens = usage.get("input_tokens") or 0
                completion.output_tokens = usage.get("output_tokens") or 0
            elif kind == "content_block_start":
                block = event["content_block"]
                if block.get("type") == "tool_use":
                    calls[event["index"]] = RequestedToolCall(block["id"], block["name"], "")
            elif kind == "content_block_delta":
                if completion.first_token_ms is None:
                    completion.first_token_ms = _ms_since(started)
                delta = event["delta"]
                if delta.get("type") == "text_delta":
                    parts.append(delta["text"])
                    yield TextDelta(delta["text"])
                elif delta.get("type") == "input_json_delta" and event["index"] in calls:
                    calls[event["index"]].arguments += delta.get("partial_json") or ""
            elif kind == "message_delta":
                usage = event.get("usage") or {}
                completion.output_tokens = usage.get("output_tokens") or completion.output_tokens
                completion.stop_reason = (event.get("delta") or {}).get("stop_reason") or ""
    completion.text = "".join(parts)
    completion.tool_calls = [calls[index] for index in sorted(calls)]
    return completion


_ANTHROPIC_EVENTS = frozenset(
    {"message_start", "content_block_start", "content_block_delta", "message_delta", "error"}
)


class _StreamError(Exception):
    """An error event inside a streamed answer (the status was 200)."""

    def __init__(self, error: Any) -> None:
        message = error.get("message") if isinstance(error, dict) else error
        self.message = " ".join(str(message or "an error event").split())[:200]
        self.overloaded = isinstance(error, dict) and error.get("type") == "overloaded_error"
        super().__init__(self.message)


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) of each Server-Sent Event (name "" when none is given)."""
    kind = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "", []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            kind = line[6:].strip()
    if data:
        yield kind, "\n".join(data)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
