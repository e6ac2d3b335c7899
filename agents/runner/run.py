"""One run of an agent task, from the queued row to the answer in the channel.

The run alternates between the database (load, record, run the tools that need it: jobs
handed to the process's few database threads by `on_database`, see db.py; the start reads
everything in one statement, queries.py) and the provider (streamed, with no connection held).
Tools that need no database (ToolSpec.needs_database, e.g. fetch_url) run on the run's own
thread: a slow fetch does not hold one of the few database threads. Lines leave for IRC as
the model writes them (agents.speech.say, one AgentSay per line).
Nothing raises out of `run`: a failure ends the task `failed` with a one-line reason.
"""

import contextlib
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from agents import speech
from agents.models import Agent, ModelCall, Task, ToolCall
from agents.runner import queries
from agents.runner.context import first_messages, system_prompt, within_budget
from agents.runner.db import on_database, release_connection, without_database
from agents.runner.lines import LineWriter
from agents.runner.providers import (
    Completion,
    Message,
    ProviderFailure,
    RequestedToolCall,
    TextDelta,
    stream_call,
)
from agents.selectors import account_budget, month_start, tokens_used_this_month
from llms.services import mark_key_rejected
from llms.tools import ToolContext, ToolResult, ToolSpec, execute_tool
from tenancy import current_account

logger = logging.getLogger(__name__)

# The "said once a month" marks live a little longer than the longest month.
_BUDGET_MARK_SECONDS = 32 * 24 * 3600


GATEWAY_GONE = "The answer could not be handed to the IRC gateway."


@dataclass
class _ToolRun:
    call: RequestedToolCall
    result: ToolResult
    started_at: datetime
    duration_ms: int


class GatewayUnreachable(Exception):
    """A line could not be handed to the gateway (Redis refused the publish)."""


class RunFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def run(task_id: int) -> None:
    """Run the task; called by agents.run_task inside the account's schema."""
    # The Celery task's prerun may have opened this thread's connection outside the bound.
    release_connection()
    try:
        _Run(task_id).execute()
    except Exception:
        logger.exception("agent task %s crashed", task_id)
        try:
            on_database(
                lambda: Task.objects.filter(
                    pk=task_id, status__in=[Task.Status.QUEUED, Task.Status.RUNNING]
                ).update(
                    status=Task.Status.FAILED,
                    error="The run failed unexpectedly.",
                    finished_at=timezone.now(),
                )
            )
        except Exception:
            logger.exception("agent task %s: could not record the failure", task_id)


class _Run:
    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        self.output: list[str] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_line_at: datetime | None = None
        self.gateway_failed = False
        self.began = timezone.now()
        self._pending_call: dict[str, Any] | None = None
        # Read on the run's own thread: the database threads' connections serve every account.
        self.tenant = current_account()

    # --- the run ---------------------------------------------------------------------------
    def execute(self) -> None:
        # One database job before the first model call and one after each (plus one after a
        # step's tools): the work between two calls is done in one hand-off (db.py). Tools
        # that need no database run on this thread, the others on a database thread.
        if not on_database(self._begin):
            return
        max_steps = max(1, self.agent.max_steps)
        for number in range(1, max_steps + 1):
            last = number == max_steps
            started = time.monotonic()
            try:
                completion = self._call(allow_tools=not last)
            except ProviderFailure as failure:
                on_database(partial(self._after_failure, number, started, failure))
                return
            except GatewayUnreachable:
                on_database(partial(self._after_gateway_gone, number, started))
                return
            if not on_database(partial(self._after_call, number, started, completion, last)):
                return
            try:
                # The text before a tool call is a line of its own.
                self._feed("\n")
            except GatewayUnreachable:
                on_database(partial(self._finish, GATEWAY_GONE))
                return
            ran = self._run_tools(completion)
            if not on_database(partial(self._after_tools, number, ran)):
                return

    def _begin(self) -> bool:
        return self._start() and self._budget_allows()

    def _after_failure(self, number: int, started: float, failure: ProviderFailure) -> None:
        self._record_call(number, started, None, failure)
        self._on_failure(failure)
        self._finish(error=failure.reason)

    def _after_gateway_gone(self, number: int, started: float) -> None:
        self._record_call(number, started, None, None)
        self._finish(error=GATEWAY_GONE)

    def _after_call(self, number: int, started: float, completion: Completion, last: bool) -> bool:
        """Record the call; finish unless it asked for tools. True: run them."""
        self._record_call(number, started, completion, None)
        if not completion.tool_calls:
            self._finish(error=GATEWAY_GONE if self.gateway_failed else "")
            return False
        if last:
            self._finish(
                error=""
                if "".join(self.output).strip()
                else f"Stopped after {number} model calls: the model kept calling "
                "tools without answering."
            )
            return False
        self._flush_call()
        return True

    def _after_tools(self, number: int, ran: list["_ToolRun"]) -> bool:
        """Record the step's tool calls. True: call the model again."""
        ToolCall.objects.bulk_create(
            ToolCall(
                task=self.task,
                step=number,
                call_id=done.call.id[:200],
                tool=done.call.name[:60],
                arguments=done.result.arguments if done.result.arguments is not None else {},
                raw_arguments=done.call.arguments,
                result=done.result.content,
                ok=done.result.ok,
                started_at=done.started_at,
                duration_ms=done.duration_ms,
            )
            for done in ran
        )
        return self._budget_allows()

    def _budget_allows(self) -> bool:
        """Before each model call: False (and the task finished) when a budget is used up."""
        try:
            self._check_budget()
        except RunFailed as failed:
            self._finish(error=failed.reason)
            return False
        return True

    def _start(self) -> bool:
        """Claim the task and build what the first call sends. False: nothing to run (the
        task is gone or already taken: Celery delivers at least once)."""
        if self.tenant is None:  # account_task refuses this; kept for callers of run() itself
            raise RuntimeError("agents.runner.run needs an account's schema")
        # One statement reads it all (queries.py); the account's row is read fresh there: the
        # worker's tenant is cached (CELERY_TASK_TENANT_CACHE_SECONDS) and budgets come from it.
        start = queries.start(task_id=self.task_id, account_id=self.tenant.pk, now=self.began)
        if start is None:
            logger.info("agent task %s: not queued any more, skipped", self.task_id)
            return False
        self.task = task = start.task
        self.account = start.account
        self.agent: Agent = start.agent
        self._usage: tuple[int | None, int | None] | None = (
            start.used_by_account,
            start.used_by_agent,
        )
        config = start.config
        refusal = ""
        if not self.agent.enabled:
            refusal = f"{self.agent.name} is turned off."
        elif config is None:
            refusal = f"{self.agent.name} has no LLM provider any more."
        elif not config.llm.is_active:
            refusal = f"The LLM provider {config.llm.name} is not offered any more."
        if refusal or config is None:
            Task.objects.filter(pk=self.task_id, status=Task.Status.QUEUED).update(
                status=Task.Status.FAILED,
                error=refusal,
                started_at=self.began,
                finished_at=timezone.now(),
            )
            return False
        self.config = config
        self.tools = start.tools
        self.specs: list[ToolSpec] = [spec for spec, _ in self.tools]
        self.system = system_prompt(
            task, self.agent, knowledge=any(spec.for_knowledge_bases for spec in self.specs)
        )
        self.messages: list[Message] = first_messages(
            task, self.agent, within_budget(start.recent, self.agent)
        )
        # The claim: of two deliveries of one task, one runs it.
        if not queries.claim(
            task_id=self.task_id,
            started_at=self.began,
            context=[{"role": "system", "content": self.system}, *self.messages],
        ):
            logger.info("agent task %s: taken by another delivery, skipped", self.task_id)
            return False
        self.target = self.task.reply_to if self.task.server_id else ""
        self.writer = LineWriter(
            self._send if self.target else None,
            max_lines=self.agent.reply_max_lines,
            link=f"{settings.PUBLIC_URL}/agents/tasks/{self.task.pk}/",
        )
        self.writer.on_first_line = self._first_line
        return True

    # --- one model call --------------------------------------------------------------------
    def _call(self, *, allow_tools: bool) -> Completion:
        """Stream one model call into the line writer; no database connection is held."""
        generator = stream_call(
            config=self.config,
            model=self.agent.model,
            system=self.system,
            messages=self.messages,
            tools=self.specs,
            allow_tools=allow_tools,
        )
        try:
            completion = _drain(generator, lambda delta: self._feed(delta.text))
        except GatewayUnreachable:
            generator.close()
            raise
        if not completion.tool_calls:
            # The answer is complete: its last line leaves now, not after the bookkeeping.
            try:
                self.writer.close()
            except GatewayUnreachable:
                self.gateway_failed = True
        self.prompt_tokens += completion.input_tokens
        self.completion_tokens += completion.output_tokens
        if completion.text:
            self.output.append(completion.text)
        self.messages.append(
            {
                "role": "assistant",
                "content": completion.text,
                "tool_calls": [
                    {"id": call.id, "name": call.name, "arguments": call.arguments}
                    for call in completion.tool_calls
                ],
            }
        )
        return completion

    def _record_call(
        self,
        number: int,
        started: float,
        completion: Completion | None,
        failure: ProviderFailure | None,
    ) -> None:
        outcome: str
        if completion is not None:
            outcome, error = ModelCall.Outcome.OK, ""
        elif failure is not None:
            outcome, error = failure.outcome, failure.reason
        else:
            outcome, error = ModelCall.Outcome.ERROR, "stopped: the gateway was unreachable"
        # Written with the task's end when the run ends now (_finish), else by _flush_call.
        self._pending_call = {
            "task_id": self.task.pk,
            "agent_id": self.agent.pk,
            "agent_name": self.agent.name,
            "step": number,
            "provider": self.config.llm.name,
            "model": self.agent.model,
            "input_tokens": completion.input_tokens if completion else 0,
            "output_tokens": completion.output_tokens if completion else 0,
            "latency_ms": int((time.monotonic() - started) * 1000),
            "first_token_ms": completion.first_token_ms if completion else None,
            "outcome": outcome,
            "error": error[:500],
            "created_at": timezone.now(),
        }

    def _flush_call(self) -> None:
        call, self._pending_call = self._pending_call, None
        if call is not None:
            queries.record(call=call, task_id=self.task_id, task=None)

    def _on_failure(self, failure: ProviderFailure) -> None:
        logger.warning(
            "agent task %s: %s call failed: %s", self.task_id, self.config.llm.name, failure.reason
        )
        if failure.outcome == ModelCall.Outcome.AUTH and mark_key_rejected(
            account=self.account, config=self.config
        ):
            self._say_notice(
                f"I cannot answer: {self.config.llm.name} rejected this account's API key. "
                "An admin can set a new one under LLM providers."
            )

    # --- tools -----------------------------------------------------------------------------
    def _run_tools(self, completion: Completion) -> list["_ToolRun"]:
        """Run the tools the model asked for, in order; their results join the conversation."""
        by_slug = {spec.slug: (spec, config) for spec, config in self.tools}
        ran = []
        for call in completion.tool_calls:
            started_at = timezone.now()
            started = time.monotonic()
            found = by_slug.get(call.name)
            if found is None:
                result = ToolResult(False, f"There is no tool named {call.name!r}.")
            else:
                spec, tool_settings = found
                job = partial(
                    execute_tool,
                    context=ToolContext(
                        account=self.account,
                        agent=self.agent,
                        task=self.task,
                        settings=tool_settings,
                    ),
                    spec=spec,
                    arguments=call.arguments,
                )
                result = on_database(job) if spec.needs_database else without_database(job)
            ran.append(_ToolRun(call, result, started_at, int((time.monotonic() - started) * 1000)))
        self.messages.append(
            {
                "role": "tool",
                "results": [
                    {
                        "id": done.call.id,
                        "name": done.call.name,
                        "content": done.result.content,
                        "ok": done.result.ok,
                    }
                    for done in ran
                ],
            }
        )
        return ran

    # --- budgets ---------------------------------------------------------------------------
    def _check_budget(self) -> None:
        budget = account_budget(account=self.account)
        # The first check uses the sums the start statement read; later ones sum again.
        usage, self._usage = self._usage, None
        if budget is not None:
            used = usage[0] if usage is not None and usage[0] is not None else None
            if (tokens_used_this_month() if used is None else used) >= budget:
                self._say_once_a_month(
                    "account",
                    "I cannot answer: this account's agents have used their monthly token budget.",
                )
                raise RunFailed("The account's monthly token budget is used up.")
        own = self.agent.monthly_token_budget
        if own:
            used = usage[1] if usage is not None and usage[1] is not None else None
            if (tokens_used_this_month(agent=self.agent) if used is None else used) >= own:
                self._say_once_a_month(
                    f"agent:{self.agent.pk}",
                    "I cannot answer: I have used my monthly token budget.",
                )
                raise RunFailed(f"{self.agent.name}'s monthly token budget is used up.")

    def _say_once_a_month(self, scope: str, text: str) -> None:
        month = f"{month_start():%Y-%m}"
        mark = f"agents:budget-said:{self.account.pk}:{scope}:{month}"
        # cache.add is Redis SET NX: of all the runs hitting the limit, one says it.
        if cache.add(mark, 1, timeout=_BUDGET_MARK_SECONDS):
            self._say_notice(text)

    # --- saying ----------------------------------------------------------------------------
    def _feed(self, text: str) -> None:
        self.writer.feed(text)

    def _send(self, line: str) -> None:
        try:
            speech.say(
                account_id=self.account.pk,
                agent_id=self.agent.pk,
                server_id=int(self.task.server_id or 0),
                target=self.target,
                text=line,
            )
        except Exception as exc:
            logger.warning("agent task %s: could not publish a line: %s", self.task_id, exc)
            raise GatewayUnreachable from None

    def _say_notice(self, text: str) -> None:
        """A line about the agent itself (not the answer); a failure to say it is logged."""
        if not self.target:
            return
        with contextlib.suppress(GatewayUnreachable):
            self._send(text)

    def _first_line(self) -> None:
        self.first_line_at = timezone.now()

    # --- the end ---------------------------------------------------------------------------
    def _finish(self, error: str = "") -> None:
        if not error:
            try:
                self.writer.close()
            except GatewayUnreachable:
                error = GATEWAY_GONE
        fields: dict[str, Any] = {
            "status": Task.Status.FAILED if error else Task.Status.SUCCEEDED,
            "error": error,
            "output": "\n".join(part.strip() for part in self.output if part.strip()),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reply_lines_sent": self.writer.sent if self.target else 0,
            "first_line_at": self.first_line_at,
            "finished_at": timezone.now(),
        }
        call, self._pending_call = self._pending_call, None
        queries.record(call=call, task_id=self.task_id, task=fields)
        logger.info(
            "agent task %s %s (%s tokens)",
            self.task_id,
            fields["status"],
            self.prompt_tokens + self.completion_tokens,
        )


def _drain(
    generator: Generator[TextDelta, None, Completion], on_text: Callable[[TextDelta], None]
) -> Completion:
    """Feed each delta to `on_text`; return the generator's Completion."""
    while True:
        try:
            delta = next(generator)
        except StopIteration as stop:
            return stop.value
        on_text(delta)
