"""The tools agents may call, defined in code. `sync_tool_catalog` mirrors them into llms.Tool.

Each tool declares the JSON-schema of its call parameters (what the LLM sees), the settings an
account may set for it (validated by llms.forms.ToolSettingsForm) and the function that runs it.
`execute_tool` is the one way a run calls a tool: it validates the arguments against the schema
first and never raises; whatever goes wrong becomes an error result the model reads.

A tool runs in the schema of the account whose agent called it (the runner is inside
`tenancy.switch(account)`) and reaches nothing else: account data through that schema, public
rows only through selectors that take `context.account`.
"""

import json
import logging
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jsonschema

if TYPE_CHECKING:
    from accounts.models import Account
    from agents.models import Agent, Task

logger = logging.getLogger(__name__)


class ToolError(Exception):
    """What a tool says went wrong, in words the model (and the run page) can use."""


@dataclass(frozen=True)
class ToolContext:
    account: "Account"
    agent: "Agent"
    task: "Task | None"
    # This tool's settings for the account (its AccountTool row over the spec's defaults).
    settings: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    # What the model reads: the tool's output, or the error.
    content: str
    # The arguments as parsed; None when they were not valid JSON.
    arguments: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolSetting:
    name: str
    label: str
    kind: str  # "int" or "timezone"
    default: Any
    min_value: int | None = None
    max_value: int | None = None
    help_text: str = ""

    def clean(self, value: Any) -> Any:
        if self.kind == "int":
            number = int(value)
            if self.min_value is not None and number < self.min_value:
                raise ValueError(f"must be at least {self.min_value}")
            if self.max_value is not None and number > self.max_value:
                raise ValueError(f"must be at most {self.max_value}")
            return number
        if self.kind == "timezone":
            text = str(value).strip()
            if text not in zoneinfo.available_timezones():
                raise ValueError(f"“{text}” is not a known time zone (e.g. Europe/Paris)")
            return text
        raise ValueError(f"unknown setting kind {self.kind}")


@dataclass(frozen=True)
class ToolSpec:
    slug: str
    name: str
    description: str
    parameters: dict[str, Any]
    settings: tuple[ToolSetting, ...] = field(default_factory=tuple)
    # (context, validated arguments) -> what the model reads. Raises ToolError for a refusal.
    run: Callable[[ToolContext, dict[str, Any]], str] | None = None

    def default_settings(self) -> dict[str, Any]:
        return {s.name: s.default for s in self.settings}


def _current_time(context: ToolContext, arguments: dict[str, Any]) -> str:
    zone = zoneinfo.ZoneInfo(str(context.settings.get("timezone") or "UTC"))
    now = datetime.now(zone)
    return now.strftime(f"%A %d %B %Y, %H:%M:%S ({zone.key}, UTC%z)")


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        slug="current_time",
        name="Current time",
        description="Tells the current date and time in the account's time zone.",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
        run=_current_time,
        settings=(
            ToolSetting(
                name="timezone",
                label="Time zone",
                kind="timezone",
                default="UTC",
                help_text="IANA name, e.g. Europe/Berlin",
            ),
        ),
    ),
    ToolSpec(
        slug="channel_history",
        name="Channel history",
        description="Reads the latest lines said in a channel the agent sits in.",
        parameters={
            "type": "object",
            "properties": {
                "channel": {"type": "string", "description": "Channel name, e.g. #python"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 200},
            },
            "required": ["channel"],
            "additionalProperties": False,
        },
        settings=(
            ToolSetting(
                name="max_lines",
                label="Most lines per call",
                kind="int",
                default=50,
                min_value=1,
                max_value=200,
            ),
        ),
    ),
)

TOOLS_BY_SLUG = {tool.slug: tool for tool in TOOLS}


def agent_tools(*, account: "Account", agent: "Agent") -> list[tuple[ToolSpec, dict[str, Any]]]:
    """The tools this agent may call now, each with its settings for the account: chosen on
    the agent, enabled for the account, defined in this code (a retired tool is left out)."""
    from llms.models import AccountTool

    chosen = set(agent.tools.values_list("slug", flat=True))
    configs = AccountTool.objects.filter(
        account=account, enabled=True, tool__slug__in=chosen, tool__is_available=True
    ).select_related("tool")
    tools = []
    for config in configs:
        spec = TOOLS_BY_SLUG.get(config.tool.slug)
        if spec is not None and spec.run is not None:
            tools.append((spec, {**spec.default_settings(), **(config.settings or {})}))
    return sorted(tools, key=lambda pair: pair[0].slug)


def execute_tool(
    *, context: ToolContext, spec: ToolSpec, arguments: str | dict[str, Any]
) -> ToolResult:
    """Validate `arguments` (JSON text from the model, or a parsed object) against the spec's
    schema and run the tool. Never raises: a bad call or a failure is an error result."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError as exc:
            return ToolResult(False, f"The arguments are not valid JSON: {exc}.")
    else:
        parsed = arguments
    if not isinstance(parsed, dict):
        return ToolResult(False, "The arguments must be a JSON object.")
    try:
        jsonschema.validate(parsed, spec.parameters)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return ToolResult(
            False, f"Invalid arguments{f' at {where}' if where else ''}: {exc.message}", parsed
        )
    if spec.run is None:
        return ToolResult(False, f"The tool {spec.slug} cannot be run.", parsed)
    try:
        return ToolResult(True, spec.run(context, parsed), parsed)
    except ToolError as exc:
        return ToolResult(False, str(exc), parsed)
    except Exception:
        # The arguments may hold anything the conversation did: they are not logged.
        logger.exception("tool %s failed", spec.slug)
        return ToolResult(False, f"The tool {spec.slug} failed unexpectedly.", parsed)
