"""What the model is told on a run's first call: who it is, where, and what was said."""

from typing import Any

from agents.models import Agent, Task
from channels_app.models import Message

# Tokens are estimated, not counted: about four characters of English per token.
CHARS_PER_TOKEN = 4
SHOWN_KINDS = (
    Message.Kind.MESSAGE,
    Message.Kind.ACTION,
    Message.Kind.NOTICE,
    Message.Kind.TOPIC,
)


def system_prompt(task: Task, agent: Agent, *, knowledge: bool = False) -> str:
    """`knowledge`: the agent has knowledge bases and the knowledge_search tool (llms.tools)."""
    server = task.server
    where = task.reply_to or "the web"
    lines = [
        f"You are {agent.nick}, an assistant on IRC (Palaver).",
        f"You are answering in {where}"
        + (f" on the IRC network {server.name}." if server is not None else "."),
        "Reply briefly in plain text: IRC shows no Markdown, and each line of your answer "
        f"becomes one IRC line (at most {agent.reply_max_lines}; more is cut with a link).",
    ]
    if knowledge:
        lines.append(
            "You have knowledge bases: for a question they may answer, call knowledge_search "
            "first and answer from the passages it returns, not from memory. Cite each passage "
            "you used by its link, written out exactly as the tool gives it, right after what "
            "it supports (plain text, no Markdown, no brackets around it). "
            "If no passage answers, say so instead of guessing."
        )
    if task.channel is not None and task.channel.topic:
        lines.append(f"The channel's topic: {task.channel.topic}")
    if agent.system_prompt.strip():
        lines += ["", agent.system_prompt.strip()]
    return "\n".join(lines)


def recent_lines(task: Task, agent: Agent) -> list[str]:
    """The channel's latest lines, newest first until the agent's context budget, returned
    oldest first. The line that asked is not among them: it is the question. (The runner reads
    the same rows within its start statement, queries.py, and calls `within_budget`.)"""
    budget = agent.context_tokens * CHARS_PER_TOKEN
    if task.channel is None or budget <= 0:
        return []
    rows = (
        Message.objects.filter(channel=task.channel, kind__in=SHOWN_KINDS)
        .exclude(pk=task.source_message_id or 0)
        .order_by("-server_time", "-id")
        .values_list("kind", "sender", "text", "server_time")
    )
    # A line is at least a few characters: no more rows than the budget could hold.
    newest = [
        (kind, sender, text, f"{at:%H:%M}")
        for kind, sender, text, at in rows[: max(1, budget // 8)]
    ]
    return within_budget(newest, agent)


def within_budget(newest: list[tuple[str, str, str, str]], agent: Agent) -> list[str]:
    """(kind, sender, text, "HH:MM"), newest first, as context lines within the agent's budget,
    oldest first."""
    budget = agent.context_tokens * CHARS_PER_TOKEN
    lines: list[str] = []
    used = 0
    for kind, sender, text, at in newest:
        if kind == Message.Kind.ACTION:
            line = f"[{at}] * {sender} {text}"
        elif kind == Message.Kind.TOPIC:
            line = f"[{at}] {sender} set the topic: {text}"
        else:
            line = f"[{at}] <{sender}> {text}"
        if used + len(line) + 1 > budget:
            break
        lines.append(line)
        used += len(line) + 1
    lines.reverse()
    return lines


def first_messages(
    task: Task, agent: Agent, lines: list[str] | None = None
) -> list[dict[str, Any]]:
    """The conversation of the first call (provider-neutral: see providers.py); `lines`: the
    recent lines when the caller has them, else they are read."""
    parts = []
    if lines is None:
        lines = recent_lines(task, agent)
    if lines:
        parts.append(f"Recent lines in {task.reply_to} (oldest first):\n" + "\n".join(lines))
    if task.trigger == Task.Trigger.SCHEDULE:
        parts.append(f"Your scheduled task: {task.input}")
    elif task.requested_by:
        parts.append(f"{task.requested_by} asks you: {task.input}")
    else:
        parts.append(task.input)
    return [{"role": "user", "content": "\n\n".join(parts)}]
