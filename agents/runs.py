"""Reads for the run page: one Task laid out as a person debugging an agent reads it."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agents.models import ModelCall, Task, ToolCall
from channels_app.models import Message


@dataclass(frozen=True)
class ContextMessage:
    role: str
    content: str


@dataclass(frozen=True)
class Step:
    """A model call or a tool call, in the order the run made them."""

    number: int
    model_call: ModelCall | None = None
    tool_call: ToolCall | None = None
    arguments: str = ""  # the tool call's arguments, pretty JSON (or as the model sent them)

    @property
    def is_model_call(self) -> bool:
        return self.model_call is not None


@dataclass(frozen=True)
class Timing:
    label: str
    at: datetime | None
    after_ms: int | None  # since the task was queued

    @property
    def after(self) -> str:
        """The time since queuing as people read it: 40 ms, 1.54 s, 3 min 5 s, 2 h 10 min."""
        ms = self.after_ms
        if ms is None:
            return ""
        if ms < 1000:
            return f"{ms} ms"
        if ms < 60_000:
            return f"{ms / 1000:.2f} s"
        seconds = ms // 1000
        if seconds < 3600:
            return f"{seconds // 60} min {seconds % 60} s"
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@dataclass(frozen=True)
class TaskRun:
    task: Task
    source_line: Message | None
    context: list[ContextMessage]
    steps: list[Step]
    timings: list[Timing]

    @property
    def in_progress(self) -> bool:
        return self.task.status in (Task.Status.QUEUED, Task.Status.RUNNING)

    @property
    def total_tokens(self) -> int:
        return self.task.prompt_tokens + self.task.completion_tokens

    @property
    def error_line(self) -> str:
        """The failure in one line, as the run page promises."""
        return " ".join(self.task.error.split())


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _content_text(content: Any) -> str:
    """A message's content: text as it is; the providers' block lists (text, tool_use,
    tool_result) as pretty JSON, readable and complete."""
    if isinstance(content, str):
        return content
    return pretty_json(content)


def context_messages(context: Any) -> list[ContextMessage]:
    if not isinstance(context, list):
        return [ContextMessage(role="?", content=_content_text(context))] if context else []
    out = []
    for item in context:
        if isinstance(item, dict):
            extra = {k: v for k, v in item.items() if k not in ("role", "content")}
            content = _content_text(item.get("content", ""))
            if extra:
                # Tool calls the model made, ids: shown rather than dropped.
                content = f"{content}\n{pretty_json(extra)}" if content else pretty_json(extra)
            out.append(ContextMessage(role=str(item.get("role", "?")), content=content))
        else:
            out.append(ContextMessage(role="?", content=_content_text(item)))
    return out


def _tool_arguments(call: ToolCall) -> str:
    if call.arguments or not call.raw_arguments:
        return pretty_json(call.arguments)
    return call.raw_arguments


def _ms_between(start: datetime, end: datetime | None) -> int | None:
    return None if end is None else round((end - start).total_seconds() * 1000)


def task_run(task: Task) -> TaskRun:
    model_calls = list(ModelCall.objects.filter(task=task))
    tool_calls = list(ToolCall.objects.filter(task=task))
    # A step's model call comes first, then the tools it asked for; ids break ties in the
    # order the rows were written.
    ordered: list[tuple[tuple[int, int, datetime, int], Step]] = []
    for m in model_calls:
        ordered.append(((m.step, 0, m.created_at, m.pk), Step(number=m.step, model_call=m)))
    for t in tool_calls:
        ordered.append(
            (
                (t.step, 1, t.started_at, t.pk),
                Step(number=t.step, tool_call=t, arguments=_tool_arguments(t)),
            )
        )
    ordered.sort(key=lambda pair: pair[0])
    source = None
    if task.source_message_id:
        source = Message.objects.filter(pk=task.source_message_id).select_related("channel").first()
    queued = task.created_at
    timings = [
        Timing("Queued", queued, 0),
        Timing("Started", task.started_at, _ms_between(queued, task.started_at)),
        Timing("First line sent", task.first_line_at, _ms_between(queued, task.first_line_at)),
        Timing("Finished", task.finished_at, _ms_between(queued, task.finished_at)),
    ]
    return TaskRun(
        task=task,
        source_line=source,
        context=context_messages(task.context),
        steps=[step for _, step in ordered],
        timings=timings,
    )
