"""Loopback LLM providers speaking the real wire formats, for the real SDKs to talk to.

One threaded HTTP server answers both:
- OpenAI `POST /v1/chat/completions`: a JSON `chat.completion`, or with `"stream": true`
  `data: {chat.completion.chunk}` Server-Sent Events ending with `data: [DONE]` (a usage chunk
  first when `stream_options.include_usage`), tool calls as `tool_calls` deltas;
- Anthropic `POST /v1/messages`: a JSON `message`, or the event stream (message_start,
  content_block_start/delta/stop with text_delta and input_json_delta, message_delta with
  usage and stop_reason, message_stop);
- OpenAI `POST /v1/embeddings` (OpenAI, Ollama, vLLM...): a `list` of `embedding`s, floats or
  base64 as `encoding_format` asks, with `usage.prompt_tokens`. The vectors are computed, not
  scripted (`Embedder`: a bag of words hashed into `dimensions`, synonyms folded together, so
  texts sharing words or synonyms are near); `server.script_embeddings(Reply.error(...))`
  queues failures instead, one per request.

A test scripts what it answers: `server.script(Reply(...), Reply(...))` queues replies served
one per request, in order; with the queue empty, `server.default` answers (or a 500 says that
the test asked for more than it scripted). Every request is recorded (`server.requests`): path,
headers, JSON body, so a test can assert what the SDK sent.

    with LLMServer() as server:
        server.script(Reply(chunks=["Hello ", "world"]))
        openai.OpenAI(base_url=server.openai_url, api_key="k")...

No pytest import here: benchmarks use it too. A benchmark that must not count the provider's
CPU in its own process (the agents benchmark: a hundred runs a second) starts it in a child
process instead, `ProviderProcess(default=Reply(...))`: the same server, the same URLs, its
`default` reply set and its `served` count read over a control route only that server has.
"""

import base64
import hashlib
import json
import math
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class ToolCallScript:
    """A tool call the model asks for. `arguments` is the raw JSON text (may be malformed),
    sent in `pieces` fragments as the providers do."""

    name: str
    arguments: str = "{}"
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")
    pieces: int = 2


@dataclass
class Reply:
    """One scripted answer.

    chunks: text fragments streamed one by one (joined for a non-streamed answer).
    tool_calls: asked for after the text.
    delay: seconds slept before each chunk (and before an empty answer's end).
    hold / hold_after: after `hold_after` chunks, wait until the test sets `hold` (so it can
      prove a first line left before the model finished). Never waits more than 30 s.
    status (>= 400) with message / error_type / code / headers: an error in the provider's
      format, e.g. Reply.error(429, "slow down", headers={"Retry-After": "1"}).
    usage: (input tokens, output tokens) reported.
    """

    chunks: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallScript] = field(default_factory=list)
    delay: float = 0.0
    hold: threading.Event | None = None
    hold_after: int = 1
    status: int = 200
    message: str = ""
    error_type: str = ""
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] = (11, 7)
    # Close the socket without answering (a provider that dies mid-request).
    drop: bool = False
    # Streamed only: after the chunks, an error event with this message instead of the end
    # (Anthropic's overloaded_error, OpenAI's `data: {"error": ...}`).
    stream_error: str = ""

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "",
        *,
        error_type: str = "",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> "Reply":
        return cls(
            status=status,
            message=message or f"error {status}",
            error_type=error_type,
            code=code,
            headers=headers or {},
        )

    @property
    def text(self) -> str:
        return "".join(self.chunks)


@dataclass
class Embedder:
    """Deterministic embeddings standing in for a model's: each word (lower-cased, folded
    through `synonyms`, e.g. {"automobile": "car"}) adds 1 to a dimension chosen by its hash, and
    the vector is normalised. A text with no word still gets a unit vector (the last dimension):
    a zero vector has no cosine distance."""

    dimensions: int = 64
    synonyms: dict[str, str] = field(default_factory=dict)

    def words(self, text: str) -> list[str]:
        return [self.synonyms.get(word, word) for word in re.findall(r"\w+", text.lower())]

    def vector(self, text: str) -> list[float]:
        values = [0.0] * self.dimensions
        for word in self.words(text):
            digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
            values[int.from_bytes(digest, "big") % (self.dimensions - 1)] += 1.0
        norm = math.sqrt(sum(v * v for v in values))
        if not norm:
            values[-1], norm = 1.0, 1.0
        return [v / norm for v in values]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float

    @property
    def provider(self) -> str:
        return "anthropic" if self.path.endswith("/messages") else "openai"


_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class LLMServer:
    """The loopback provider. A context manager; `start()`/`stop()` for benchmarks."""

    def __init__(
        self, default: Reply | None = None, host: str = "127.0.0.1", *, controlled: bool = False
    ) -> None:
        self.default = default
        # Answers CONTROL_PATH (ProviderProcess's child only).
        self.controlled = controlled
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.llm = self
        self._thread: threading.Thread | None = None
        self.served = 0
        # POST /v1/embeddings: computed by `embedder`, unless a failure is scripted.
        self.embedder = Embedder()
        self.embedding_replies: deque[Reply] = deque()

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """What an OpenAI client's base_url is (the SDK appends /chat/completions)."""
        return f"{self.url}/v1"

    @property
    def anthropic_url(self) -> str:
        """What an Anthropic client's base_url is (the SDK appends /v1/messages)."""
        return self.url

    def start(self) -> "LLMServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- script ------------------------------------------------------------------------------
    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def script_embeddings(self, *replies: Reply) -> None:
        """Queue answers to the next embeddings requests, one each: an error (Reply.error,
        `drop`) or, with status 200, the computed vectors after `delay`."""
        with self._lock:
            self.embedding_replies.extend(replies)

    def next_embedding_reply(self) -> Reply | None:
        with self._lock:
            return self.embedding_replies.popleft() if self.embedding_replies else None

    @property
    def embedding_requests(self) -> list["Recorded"]:
        return [r for r in self.requests if r.path.rstrip("/").endswith("/embeddings")]

    def next_reply(self) -> Reply | None:
        with self._lock:
            self.served += 1
            if self.replies:
                return self.replies.popleft()
            return self.default

    def record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(Recorded(path, headers, body, time.monotonic()))

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.requests)} requests, waited for {count}")
            time.sleep(0.01)
        return self.requests


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of hundreds of runs connect at once: the default backlog (5) would refuse some.
    request_queue_size = 1024
    llm: LLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away (a test's timeout, the SDK dropping a connection) is no error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # A stream is many small writes: without TCP_NODELAY (which real providers' front
        # servers set) each waits for the client's delayed ACK, 40 ms, on a kept-alive
        # connection, the SDKs' normal case.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read self.server.llm.requests instead

    # --- plumbing ----------------------------------------------------------------------------
    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, text: str, *, last: bool = False) -> None:
        data = text.encode()
        frame = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        # The last event and the end of the body in one write: a client that stops reading at
        # the last event (the SDKs do) still finds the body complete and keeps the connection.
        self.wfile.write(frame + b"0\r\n\r\n" if last else frame)
        self.wfile.flush()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_unparsed": raw.decode(errors="replace")}
        llm = self.server.llm
        if llm.controlled and self.path == CONTROL_PATH:
            # ProviderProcess's parent: a new default reply (None: none), and the count.
            if "default" in body:
                llm.default = _reply_from(body["default"])
            self._send_json(200, {"served": llm.served})
            return
        llm.record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        if self.path.rstrip("/").endswith("/embeddings"):
            self._embeddings(llm, body)
            return
        anthropic = self.path.rstrip("/").endswith("/v1/messages")
        if not anthropic and not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        reply = llm.next_reply()
        if reply is None:
            self._error(anthropic, Reply.error(500, "the test scripted no reply for this request"))
            return
        if reply.drop:
            self.close_connection = True
            self.connection.close()
            return
        if reply.status >= 400:
            self._error(anthropic, reply)
            return
        model = str(body.get("model", ""))
        stream = bool(body.get("stream"))
        try:
            if anthropic:
                if stream:
                    self._anthropic_stream(reply, model)
                else:
                    self._anthropic_json(reply, model)
            elif stream:
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                self._openai_stream(reply, model, include_usage)
            else:
                self._openai_json(reply, model)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, anthropic: bool, reply: Reply) -> None:
        if anthropic:
            payload: dict[str, Any] = {
                "type": "error",
                "error": {
                    "type": reply.error_type
                    or _ANTHROPIC_ERROR_TYPES.get(reply.status, "api_error"),
                    "message": reply.message,
                },
            }
        else:
            payload = {
                "error": {
                    "message": reply.message,
                    "type": reply.error_type or _OPENAI_ERROR_TYPES.get(reply.status, "error"),
                    "param": None,
                    "code": reply.code,
                }
            }
        # Scripted errors are final unless a test scripts a retryable status: never let the
        # SDK's retry logic be steered by anything but the status and the scripted headers.
        headers = {"x-should-retry": "false"} if reply.status not in (408, 409, 429) else {}
        if reply.status >= 500:
            headers = {}
        headers.update(reply.headers)
        self._send_json(reply.status, payload, headers)

    def _pace(self, reply: Reply, index: int) -> None:
        if reply.hold is not None and index == reply.hold_after:
            reply.hold.wait(timeout=30)
        if reply.delay:
            time.sleep(reply.delay)

    def _pieces(self, arguments: str, pieces: int) -> Iterator[str]:
        step = max(1, -(-len(arguments) // max(1, pieces)))
        for start in range(0, len(arguments), step):
            yield arguments[start : start + step]

    # --- OpenAI ------------------------------------------------------------------------------
    def _embeddings(self, llm: LLMServer, body: dict[str, Any]) -> None:
        reply = llm.next_embedding_reply()
        if reply is not None and reply.drop:
            self.close_connection = True
            self.connection.close()
            return
        if reply is not None and reply.status >= 400:
            self._error(False, reply)
            return
        if reply is not None and reply.delay:
            time.sleep(reply.delay)
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            self._error(False, Reply.error(400, "'input' must be a string or a list of strings"))
            return
        base64_wanted = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = llm.embedder.vector(text)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if base64_wanted
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(llm.embedder.words(text)) for text in inputs)
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model", "")),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _openai_stream(self, reply: Reply, model: str, include_usage: bool) -> None:
        ident = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            self._chunk(f"data: {json.dumps(payload)}\n\n")

        self._start_stream()
        chunk({"role": "assistant", "content": ""})
        for index, text in enumerate(reply.chunks):
            self._pace(reply, index)
            chunk({"content": text})
        if not reply.chunks:
            self._pace(reply, 0)
        if reply.stream_error:
            error = {"error": {"message": reply.stream_error, "type": "server_error"}}
            self._chunk(f"data: {json.dumps(error)}\n\n", last=True)
            return
        for position, call in enumerate(reply.tool_calls):
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": position,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in self._pieces(call.arguments, call.pieces):
                chunk({"tool_calls": [{"index": position, "function": {"arguments": piece}}]})
        chunk({}, "tool_calls" if reply.tool_calls else "stop")
        if include_usage:
            prompt, completion = reply.usage
            usage = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
            self._chunk(f"data: {json.dumps(usage)}\n\n")
        self._chunk("data: [DONE]\n\n", last=True)

    def _openai_json(self, reply: Reply, model: str) -> None:
        for index in range(len(reply.chunks) or 1):
            self._pace(reply, index)
        prompt, completion = reply.usage
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in reply.tool_calls
            ]
        self._send_json(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
        )

    # --- Anthropic ---------------------------------------------------------------------------
    def _anthropic_stream(self, reply: Reply, model: str) -> None:
        def event(name: str, payload: dict[str, Any], *, last: bool = False) -> None:
            self._chunk(f"event: {name}\ndata: {json.dumps(payload)}\n\n", last=last)

        prompt, completion = reply.usage
        self._start_stream()
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_{uuid.uuid4().hex[:16]}",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": model,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": prompt, "output_tokens": 1},
                },
            },
        )
        block = 0
        if reply.chunks:
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for index, text in enumerate(reply.chunks):
                self._pace(reply, index)
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            event("content_block_stop", {"type": "content_block_stop", "index": 0})
            block = 1
        else:
            self._pace(reply, 0)
        if reply.stream_error:
            error = {"type": "overloaded_error", "message": reply.stream_error}
            event("error", {"type": "error", "error": error}, last=True)
            return
        for offset, call in enumerate(reply.tool_calls):
            index = block + offset
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": {},
                    },
                },
            )
            for piece in self._pieces(call.arguments, call.pieces):
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": completion},
            },
        )
        event("message_stop", {"type": "message_stop"}, last=True)

    def _anthropic_json(self, reply: Reply, model: str) -> None:
        for index in range(len(reply.chunks) or 1):
            self._pace(reply, index)
        prompt, completion = reply.usage
        content: list[dict[str, Any]] = []
        if reply.chunks:
            content.append({"type": "text", "text": reply.text})
        for call in reply.tool_calls:
            try:
                parsed = json.loads(call.arguments or "{}")
            except ValueError:
                parsed = {}
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": parsed})
        self._send_json(
            200,
            {
                "id": f"msg_{uuid.uuid4().hex[:16]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": completion},
            },
        )


# --- in a child process ------------------------------------------------------------------------

CONTROL_PATH = "/_llm_server/control"
_PROJECT_DIR = Path(__file__).resolve().parent.parent


def _reply_from(fields: dict[str, Any] | None) -> Reply | None:
    if fields is None:
        return None
    fields = dict(fields)
    fields["tool_calls"] = [ToolCallScript(**call) for call in fields.get("tool_calls") or []]
    fields["usage"] = tuple(fields.get("usage") or (11, 7))
    return Reply(**fields)


class ProviderProcess:
    """An LLMServer in a child process (`python -m tests.llm_servers`), for benchmarks: what it
    spends serving a hundred runs a second is not the caller's CPU. The same `openai_url`,
    `anthropic_url`, `served` and a settable `default` as LLMServer; no scripted queue, no
    recorded requests, no `hold` (they do not cross processes). `pid` for its CPU time.

        provider = ProviderProcess(default=Reply(chunks=["Pong."])).start()
        ...
        provider.default = Reply(chunks=["Later."], delay=1.0)
        provider.stop()
    """

    def __init__(self, default: Reply | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self._default = default
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() it first"
        return self._process.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_url(self) -> str:
        return self.url

    @property
    def default(self) -> Reply | None:
        return self._default

    @default.setter
    def default(self, reply: Reply | None) -> None:
        if reply is not None and reply.hold is not None:
            raise ValueError("a hold cannot cross into the provider's process")
        self._default = reply
        if self._process is not None:
            self._control({"default": None if reply is None else _reply_fields(reply)})

    @property
    def served(self) -> int:
        return int(self._control({})["served"])

    def start(self) -> "ProviderProcess":
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.llm_servers", self.host],
            cwd=_PROJECT_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the provider process did not start: {line!r}")
        self.port = int(line)
        self.default = self._default
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the child serves until its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> "ProviderProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _control(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            self.url + CONTROL_PATH,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return dict(json.loads(response.read()))


def _reply_fields(reply: Reply) -> dict[str, Any]:
    fields = asdict(reply)
    fields.pop("hold")
    return fields


def _serve_until_stdin_closes(host: str) -> None:
    server = LLMServer(host=host, controlled=True).start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    _serve_until_stdin_closes(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1")
