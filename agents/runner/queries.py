"""The statements on a run's hot path, their text built once per process from the models.

Why not the ORM here: with a hundred runs in flight the worker's CPU, not the providers, sets
how many runs a second one process completes, and half of that CPU went into the start of a
run: Django compiling and executing nine queries (the task with select_related and defer, the
account, the provider, agent_tools' two, the context, two budget sums, the claim) on a hundred
runs a second (benchmarks/agent_runs.py; the numbers are in the commit that brought this).
The same rows come here from ONE statement whose text is built on first use: the task, its
agent, channel and server, the agent's provider and its catalog entry, the account, the tools
the agent may call with their settings, the channel's recent lines, and this month's usage
when a budget applies; then one UPDATE claims the task. At the end, the model call's row and
the task's outcome are written by one statement (`record`).

The column lists come from the models' _meta and rows become model instances through
`Model.from_db` after the fields' own converters (decryption, JSON), so a field added to one of
these models is read here too; the joins mirror what run.py read before (see the functions
each part mirrors, named below), and tests/test_agent_speed.py holds them to it.
"""

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models

from accounts.models import Account
from agents.models import Agent, ModelCall, Task
from agents.runner.context import CHARS_PER_TOKEN, SHOWN_KINDS
from agents.selectors import month_start
from channels_app.models import Channel, Message, Server
from llms.models import LLM, AccountLLM, AccountTool, Tool
from llms.tools import KNOWLEDGE_BASE_TOOLS, TOOLS_BY_SLUG, ToolSpec
from tenancy.context import connection

_Converter = Callable[[Any, Any, Any], Any]


class _Shape:
    """One model's columns in a statement (alias.column, ...) and how a row slice becomes an
    instance: the fields' converters, then Model.from_db (fields left out stay deferred)."""

    def __init__(self, model: type[models.Model], alias: str, skip: Sequence[str] = ()) -> None:
        self.model = model
        quote = connection.ops.quote_name
        self.fields = [f for f in model._meta.concrete_fields if f.attname not in skip]
        self.attnames = [f.attname for f in self.fields]
        self.columns = ", ".join(f"{alias}.{quote(f.column)}" for f in self.fields)
        self.width = len(self.fields)
        self._expressions = [f.get_col(alias) for f in self.fields]
        self._converters: list[list[_Converter]] | None = None

    def build(self, values: Sequence[Any]) -> Any:
        """The instance, or None for a left join that found nothing (its key is NULL)."""
        if values[self.attnames.index(self.model._meta.pk.attname)] is None:
            return None
        if self._converters is None:
            self._converters = [
                connection.ops.get_db_converters(expression)
                + expression.get_db_converters(connection)
                for expression in self._expressions
            ]
        converted = list(values)
        for index, converters in enumerate(self._converters):
            for convert in converters:
                converted[index] = convert(converted[index], self._expressions[index], connection)
        return self.model.from_db(connection.alias, self.attnames, converted)


@dataclass
class Start:
    """What the start of a run reads: the queued task (None when it is not queued any more)
    with its agent, channel and server set on it, and the rest."""

    task: Task
    agent: Agent
    account: Account
    # None: the agent's provider is gone (deleted, or not this account's).
    config: AccountLLM | None
    # Mirrors llms.tools.agent_tools: (spec, settings over the spec's defaults), by slug.
    tools: list[tuple[ToolSpec, dict[str, Any]]]
    # The channel's recent lines, newest first: (kind, sender, text, "HH:MM" in UTC).
    recent: list[tuple[str, str, str, str]]
    # Tokens used this month (agents.selectors.tokens_used_this_month) by the account's agents
    # and by this agent; None when no budget applies (not summed then).
    used_by_account: int | None
    used_by_agent: int | None


class _StartStatement:
    def __init__(self) -> None:
        quote = connection.ops.quote_name

        def table(model: type[models.Model]) -> str:
            return quote(model._meta.db_table)

        self.task = _Shape(Task, "t", skip=("context", "output"))
        self.agent = _Shape(Agent, "a")
        # A run never needs the IRC secrets: they are not read, nor decrypted.
        self.channel = _Shape(Channel, "c", skip=("key",))
        self.server = _Shape(Server, "s", skip=("password", "sasl_password"))
        self.config = _Shape(AccountLLM, "p")
        self.llm = _Shape(LLM, "l")
        self.account = _Shape(Account, "x")
        self.shapes = [
            self.task,
            self.agent,
            self.channel,
            self.server,
            self.config,
            self.llm,
            self.account,
        ]
        through = Agent._meta.get_field("tools")
        assert isinstance(through, models.ManyToManyField)
        m2m = through.remote_field.through._meta.db_table  # type: ignore[union-attr]
        kbs = Agent._meta.get_field("knowledge_bases")
        assert isinstance(kbs, models.ManyToManyField)
        kb_m2m = kbs.remote_field.through._meta.db_table  # type: ignore[union-attr]
        used = (
            f"SELECT COALESCE(SUM(u.input_tokens + u.output_tokens), 0) FROM {table(ModelCall)} u"
        )
        self.sql = f"""
SELECT {", ".join(shape.columns for shape in self.shapes)},
  (SELECT COALESCE(json_agg(json_build_array(tl.slug, at.settings)), '[]'::json)
     FROM {quote(m2m)} m
     JOIN {table(Tool)} tl ON tl.id = m.{quote(through.m2m_reverse_name())} AND tl.is_available
     JOIN {table(AccountTool)} at ON at.tool_id = tl.id AND at.enabled
                                  AND at.account_id = %(account)s
    WHERE m.{quote(through.m2m_column_name())} = a.id),
  CASE WHEN EXISTS (SELECT 1 FROM {quote(kb_m2m)} k WHERE k.{quote(kbs.m2m_column_name())} = a.id)
       THEN (SELECT COALESCE(json_object_agg(tl.slug, at.settings), '{{}}'::json)
               FROM {table(AccountTool)} at
               JOIN {table(Tool)} tl ON tl.id = at.tool_id
              WHERE at.account_id = %(account)s AND tl.slug = ANY(%(knowledge_tools)s)) END,
  (SELECT COALESCE(json_agg(json_build_array(r.kind, r.sender, r.text, r.at)
                            ORDER BY r.server_time DESC, r.id DESC), '[]'::json)
     FROM (SELECT g.id, g.kind, g.sender, g.text, g.server_time,
                  to_char(g.server_time AT TIME ZONE 'UTC', 'HH24:MI') AS at
             FROM {table(Message)} g
            WHERE g.channel_id = t.channel_id AND g.kind = ANY(%(kinds)s)
              AND g.id <> COALESCE(t.source_message_id, 0)
            ORDER BY g.server_time DESC, g.id DESC
            LIMIT GREATEST(1, a.context_tokens * %(chars)s / 8)) r
    WHERE a.context_tokens > 0),
  CASE WHEN COALESCE(x.monthly_token_budget, %(default_budget)s) > 0
       THEN ({used} WHERE u.created_at >= %(month)s) END,
  CASE WHEN a.monthly_token_budget > 0
       THEN ({used} WHERE u.created_at >= %(month)s AND u.agent_id = a.id) END
FROM {table(Task)} t
JOIN {table(Agent)} a ON a.id = t.agent_id
LEFT JOIN {table(Channel)} c ON c.id = t.channel_id
LEFT JOIN {table(Server)} s ON s.id = t.server_id
LEFT JOIN {table(AccountLLM)} p ON p.id = a.account_llm_id AND p.account_id = %(account)s
LEFT JOIN {table(LLM)} l ON l.id = p.llm_id
JOIN {table(Account)} x ON x.id = %(account)s
WHERE t.id = %(task)s AND t.status = %(queued)s
"""

    def fetch(self, *, task_id: int, account_id: Any, now: datetime) -> Start | None:
        with connection.cursor() as cursor:
            cursor.execute(
                self.sql,
                {
                    "task": task_id,
                    "queued": Task.Status.QUEUED,
                    "account": account_id,
                    "month": month_start(now),
                    "default_budget": settings.AGENT_MONTHLY_TOKEN_BUDGET,
                    "chars": CHARS_PER_TOKEN,
                    "kinds": [str(kind) for kind in SHOWN_KINDS],
                    "knowledge_tools": list(KNOWLEDGE_BASE_TOOLS),
                },
            )
            row = cursor.fetchone()
        if row is None:
            return None
        built = []
        offset = 0
        for shape in self.shapes:
            built.append(shape.build(row[offset : offset + shape.width]))
            offset += shape.width
        task, agent, channel, server, config, llm, account = built
        tools_json, knowledge_json, recent_json, used_by_account, used_by_agent = row[offset:]
        Task.agent.field.set_cached_value(task, agent)
        Task.channel.field.set_cached_value(task, channel)
        Task.server.field.set_cached_value(task, server)
        if config is not None:
            AccountLLM.llm.field.set_cached_value(config, llm)
            AccountLLM.account.field.set_cached_value(config, account)
        Agent.account_llm.field.set_cached_value(agent, config)
        return Start(
            task=task,
            agent=agent,
            account=account,
            config=config,
            tools=_tools(_json(tools_json), _json(knowledge_json)),
            recent=[tuple(line) for line in _json(recent_json)],
            used_by_account=None if used_by_account is None else int(used_by_account),
            used_by_agent=None if used_by_agent is None else int(used_by_agent),
        )


def _json(value: Any) -> Any:
    # json (json_agg) arrives parsed; jsonb arrives as text (Django registers a text loader).
    return json.loads(value) if isinstance(value, str | bytes) else value


def _tools(
    rows: list[list[Any]], knowledge: dict[str, Any] | None
) -> list[tuple[ToolSpec, dict[str, Any]]]:
    """llms.tools.agent_tools from the statement's (slug, settings) rows of the chosen tools,
    and `knowledge`: None when the agent has no knowledge base, else the account's settings of
    the knowledge tools by slug (those it saved)."""
    tools = []
    for slug, stored in rows:
        spec = TOOLS_BY_SLUG.get(slug)
        if spec is not None and spec.run is not None and not spec.for_knowledge_bases:
            tools.append((spec, {**spec.default_settings(), **(_json(stored) or {})}))
    if knowledge is not None:
        for slug in KNOWLEDGE_BASE_TOOLS:
            spec = TOOLS_BY_SLUG[slug]
            tools.append((spec, {**spec.default_settings(), **(_json(knowledge.get(slug)) or {})}))
    return sorted(tools, key=lambda pair: pair[0].slug)


_lock = threading.Lock()
_start: _StartStatement | None = None


def start(*, task_id: int, account_id: Any, now: datetime) -> Start | None:
    """Everything the start of a run reads, in one statement; None when the task is not
    queued (gone, or taken by another delivery)."""
    global _start
    if _start is None:
        with _lock:
            if _start is None:
                _start = _StartStatement()
    return _start.fetch(task_id=task_id, account_id=account_id, now=now)


def claim(*, task_id: int, started_at: datetime, context: list[dict[str, Any]]) -> bool:
    """Mark the queued task running with the context its first call sends. False: another
    delivery of the same task claimed it first."""
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(Task._meta.db_table)} SET status = %s, started_at = %s,"
            " context = %s::jsonb WHERE id = %s AND status = %s",
            [
                Task.Status.RUNNING,
                started_at,
                json.dumps(context),
                task_id,
                Task.Status.QUEUED,
            ],
        )
        return bool(cursor.rowcount)


def _insert(model: type[models.Model], values: dict[str, Any]) -> tuple[str, list[Any]]:
    """INSERT of one row: `values` by attname, any other field its default."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    unknown = set(values) - {f.attname for f in fields}
    if unknown:
        raise ValueError(f"{model.__name__} has no field {sorted(unknown)}")
    quote = connection.ops.quote_name
    params = [
        f.get_db_prep_save(
            values[f.attname] if f.attname in values else f.get_default(), connection
        )
        for f in fields
    ]
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)})"
        f" VALUES ({', '.join(['%s'] * len(fields))})",
        params,
    )


def _update(model: type[models.Model], pk: Any, values: dict[str, Any]) -> tuple[str, list[Any]]:
    quote = connection.ops.quote_name
    fields = [model._meta.get_field(name) for name in values]
    return (
        f"UPDATE {quote(model._meta.db_table)} SET "
        + ", ".join(f"{quote(f.column)} = %s" for f in fields)  # type: ignore[union-attr]
        + f" WHERE {quote(model._meta.pk.column)} = %s",
        [
            f.get_db_prep_save(values[f.name], connection)  # type: ignore[union-attr]
            for f in fields
        ]
        + [pk],
    )


def record(
    *, call: dict[str, Any] | None = None, task_id: int, task: dict[str, Any] | None
) -> None:
    """Insert a ModelCall (`call`, by attname) and update the task's fields (`task`, by name),
    in one statement: the end of a run is one round trip, with no ORM compilation."""
    parts = []
    if call is not None:
        parts.append(_insert(ModelCall, call))
    if task:
        parts.append(_update(Task, task_id, task))
    if not parts:
        return
    if len(parts) == 2:
        (insert, insert_params), (update, update_params) = parts
        sql, params = f"WITH recorded AS ({insert}) {update}", insert_params + update_params
    else:
        sql, params = parts[0]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
