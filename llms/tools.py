"""The tools agents may call, defined in code. `sync_tool_catalog` mirrors them into llms.Tool.

Each tool declares the JSON-schema of its call parameters (what the LLM sees) and the settings an
account may set for it (validated by llms.forms.AccountToolForm).
"""

import zoneinfo
from dataclasses import dataclass, field
from typing import Any


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

    def default_settings(self) -> dict[str, Any]:
        return {s.name: s.default for s in self.settings}


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        slug="current_time",
        name="Current time",
        description="Tells the current date and time in the account's time zone.",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
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
