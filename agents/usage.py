"""Reads for the usage page, and the chart's geometry.

Every figure is aggregated by PostgreSQL (one GROUP BY per question); Python only lays the
totals out, so the template draws rectangles at coordinates it is given ("templates only
display"). Days are UTC calendar days, as the monthly budgets are (agents.selectors.month_start).
"""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from agents.models import Agent, ModelCall
from agents.selectors import month_start

DAYS = 30
# Colours are CSS classes (usage-s0 .. usage-s7), light and dark in palaver.css; an inline
# style would be refused by the Content-Security-Policy.
SERIES_COLOURS = 8
# The chart's drawing box, in SVG user units; the SVG scales to the page's width.
CHART_WIDTH = 720
CHART_HEIGHT = 220
CHART_LEFT = 56  # room for the y-axis labels
CHART_RIGHT = 24  # room for the last day's label, centred under its column
CHART_BOTTOM = 24  # room for the day labels
CHART_TOP = 8


@dataclass(frozen=True)
class DayAgentTokens:
    day: date
    agent_id: int | None
    agent_name: str
    tokens: int
    calls: int


def daily_tokens(*, days: int = DAYS, now: datetime | None = None) -> list[DayAgentTokens]:
    """Tokens per UTC day per agent over the last `days` days (today included): one GROUP BY.
    An agent deleted since keeps its usage, under the name it had (ModelCall.agent_name)."""
    today = (now or timezone.now()).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    rows = (
        ModelCall.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        # The name too: the agents deleted since (agent_id NULL) stay apart, by name.
        .values("day", "agent_id", "agent_name")
        .annotate(tokens=Sum(F("input_tokens") + F("output_tokens")), calls=Count("pk"))
        .order_by("day", "agent_id", "agent_name")
    )
    return [
        DayAgentTokens(
            day=row["day"],
            agent_id=row["agent_id"],
            agent_name=row["agent_name"],
            tokens=int(row["tokens"] or 0),
            calls=int(row["calls"]),
        )
        for row in rows
    ]


@dataclass(frozen=True)
class BudgetBar:
    """Tokens used against a budget, as a <meter> shows it: the warning colour from 75 %, the
    alarm colour from 90 %. No budget, no bar."""

    used: int
    budget: int | None

    @property
    def percent(self) -> int | None:
        if not self.budget:
            return None
        return min(100, round(100 * self.used / self.budget))

    @property
    def reached(self) -> bool:
        return bool(self.budget) and self.used >= (self.budget or 0)

    @property
    def low(self) -> int:
        return (self.budget or 0) * 3 // 4

    @property
    def high(self) -> int:
        return (self.budget or 0) * 9 // 10

    @property
    def meter_value(self) -> int:
        return min(self.used, self.budget or 0)


@dataclass(frozen=True)
class AgentMonth:
    agent_id: int | None
    name: str
    tokens: int
    calls: int
    budget: int | None

    @property
    def bar(self) -> BudgetBar:
        return BudgetBar(used=self.tokens, budget=self.budget)


def agent_month_totals(*, now: datetime | None = None) -> list[AgentMonth]:
    """Every agent (with or without calls this month) and each deleted agent that used
    tokens this month: its month's tokens against its own budget."""
    rows = (
        ModelCall.objects.filter(created_at__gte=month_start(now))
        .values("agent_id", "agent_name")
        .annotate(tokens=Sum(F("input_tokens") + F("output_tokens")), calls=Count("pk"))
        .order_by()
    )
    live: dict[int, tuple[int, int]] = {}
    deleted: dict[str, tuple[int, int]] = {}
    for row in rows:
        # A renamed agent has a row per name it had: one agent, one total.
        bucket, key = (live, row["agent_id"]) if row["agent_id"] else (deleted, row["agent_name"])
        tokens, calls = bucket.get(key, (0, 0))
        bucket[key] = (tokens + int(row["tokens"] or 0), calls + int(row["calls"]))
    out = []
    for agent in Agent.objects.order_by("name"):
        tokens, calls = live.get(agent.pk, (0, 0))
        out.append(
            AgentMonth(
                agent_id=agent.pk,
                name=agent.name,
                tokens=tokens,
                calls=calls,
                budget=agent.monthly_token_budget,
            )
        )
    for name, (tokens, calls) in sorted(deleted.items()):
        out.append(
            AgentMonth(
                agent_id=None, name=f"{name} (deleted)", tokens=tokens, calls=calls, budget=None
            )
        )
    return out


@dataclass(frozen=True)
class OutcomeCount:
    outcome: str
    label: str
    calls: int

    @property
    def is_error(self) -> bool:
        return self.outcome != ModelCall.Outcome.OK


def outcome_counts(*, now: datetime | None = None) -> list[OutcomeCount]:
    """This month's model calls by outcome, answered first, then the most frequent failures."""
    labels = dict(ModelCall.Outcome.choices)
    rows = (
        ModelCall.objects.filter(created_at__gte=month_start(now))
        .values("outcome")
        .annotate(calls=Count("pk"))
        .order_by()
    )
    counts = [
        OutcomeCount(
            outcome=r["outcome"], label=labels.get(r["outcome"], r["outcome"]), calls=r["calls"]
        )
        for r in rows
    ]
    return sorted(counts, key=lambda c: (c.is_error, -c.calls, c.outcome))


def recent_failures(*, limit: int = 10) -> list[ModelCall]:
    return list(
        ModelCall.objects.exclude(outcome=ModelCall.Outcome.OK).order_by("-created_at", "-pk")[
            :limit
        ]
    )


# --- the chart ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    key: str  # "a<id>" for an agent, "n<name>" for a deleted one
    name: str
    css_class: str


@dataclass(frozen=True)
class Segment:
    series: Series
    tokens: int
    x: float
    y: float
    width: float
    height: float


@dataclass
class DayColumn:
    day: date
    total: int = 0
    segments: list[Segment] = field(default_factory=list)
    by_series: dict[str, int] = field(default_factory=dict)
    label: str = ""  # shown under the column for every few days only
    label_x: float = 0.0


@dataclass(frozen=True)
class Tick:
    value: int
    y: float


@dataclass
class UsageChart:
    width: int
    height: int
    left: int
    plot_right: int
    plot_bottom: float
    series: list[Series]
    columns: list[DayColumn]
    ticks: list[Tick]
    total: int

    @property
    def summary(self) -> str:
        """What a screen reader says for the image (the table below has every number)."""
        if not self.total:
            return f"No tokens used in the last {len(self.columns)} days."
        busiest = max(self.columns, key=lambda c: c.total)
        return (
            f"Tokens per day per agent over the last {len(self.columns)} days: "
            f"{self.total:,} in all, the most on {busiest.day:%-d %B} ({busiest.total:,})."
        )

    def table_rows(self) -> list[tuple[date, list[tuple[str, int]], int]]:
        """Day, (agent, tokens) in legend order, day total: the chart as a table."""
        return [
            (c.day, [(s.name, c.by_series.get(s.key, 0)) for s in self.series], c.total)
            for c in self.columns
        ]


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times 10^n at or above `value`: a y-axis top people can read."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover (the loop always returns)


def usage_chart(
    rows: list[DayAgentTokens], *, days: int = DAYS, now: datetime | None = None
) -> UsageChart:
    """Stacked columns, one per day, one segment per agent, from `daily_tokens` rows."""
    today = (now or timezone.now()).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    current_names = dict(Agent.objects.values_list("pk", "name"))
    series: dict[str, Series] = {}
    columns = [DayColumn(day=first + timedelta(days=i)) for i in range(days)]
    by_day = {c.day: c for c in columns}
    for row in rows:
        if row.agent_id is not None and row.agent_id in current_names:
            key, name = f"a{row.agent_id}", current_names[row.agent_id]
        else:
            key, name = f"n{row.agent_name}", f"{row.agent_name} (deleted)"
        if key not in series:
            series[key] = Series(
                key=key, name=name, css_class=f"usage-s{len(series) % SERIES_COLOURS}"
            )
        column = by_day.get(row.day)
        if column is None:
            continue
        column.by_series[key] = column.by_series.get(key, 0) + row.tokens
        column.total += row.tokens
    ordered = sorted(series.values(), key=lambda s: s.name.lower())
    top = _nice_ceiling(max((c.total for c in columns), default=0))
    plot_bottom = CHART_HEIGHT - CHART_BOTTOM
    plot_height = plot_bottom - CHART_TOP
    slot = (CHART_WIDTH - CHART_LEFT - CHART_RIGHT) / days
    bar_width = round(slot * 0.7, 2)
    label_every = max(1, days // 6)
    for i, column in enumerate(columns):
        x = round(CHART_LEFT + i * slot + (slot - bar_width) / 2, 2)
        y = float(plot_bottom)
        for s in ordered:
            tokens = column.by_series.get(s.key, 0)
            if not tokens:
                continue
            height = plot_height * tokens / top
            y -= height
            column.segments.append(
                Segment(
                    series=s,
                    tokens=tokens,
                    x=x,
                    y=round(y, 2),
                    width=bar_width,
                    height=round(height, 2),
                )
            )
        column.label_x = round(x + bar_width / 2, 2)
        if (days - 1 - i) % label_every == 0:
            column.label = f"{column.day:%-d %b}"
    # Gridlines at round numbers: 1000 in fifths, 2000 in quarters, 5000 in fifths.
    parts = 4 if str(top)[0] == "2" else 5
    ticks = [
        Tick(value=top * k // parts, y=round(plot_bottom - plot_height * k / parts, 2))
        for k in range(parts + 1)
    ]
    return UsageChart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        left=CHART_LEFT,
        plot_right=CHART_WIDTH - CHART_RIGHT,
        plot_bottom=plot_bottom,
        series=ordered,
        columns=columns,
        ticks=ticks,
        total=sum(c.total for c in columns),
    )
