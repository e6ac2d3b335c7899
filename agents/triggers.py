"""What calls an agent: a line addressing it in one of its channels, a private message to it,
and `/ask` from the web chat. Each becomes a Task (agents.services.tasks.create_task).

`on_lines_stored` listens to every batch of stored lines of every account (channels_app.hooks),
so the path with nothing to do is one small query: the account's agents. Then one query for the
agents' channels and one for the batch's lines there; matching is in Python, per line, against
nicks folded the way IRC compares them.

No loops: an agent never answers a line from its own nick or any other agent's nick of the
account, a line marked as a bot's (IRCv3 `bot`, `draft/bot`), a line an agent said through the
user's connection (`palaver/agent`), or a line replayed from history. A per-channel cool-down
(per nick for private messages) is a Redis key set with NX and an expiry: at most one run starts
per agent and channel in that time, however many workers see lines.
"""

import logging
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from agents.models import Agent, Task
from agents.services.tasks import create_task
from channels_app.models import Channel, Message, Server
from channels_app.slash_commands import CommandError
from gateway.agents import BOT_TAGS
from gateway.chathistory import HISTORY_TAG
from gateway.connection import AGENT_TAG
from gateway.protocol import casefold
from tenancy import current_account

logger = logging.getLogger(__name__)

# Lines carrying any of these tags never call an agent: a bot's (IRCv3 bot mode, as the gateway
# recognises it), an agent's said through the user's connection, history replayed.
NO_TRIGGER_TAGS = frozenset({*BOT_TAGS, AGENT_TAG, HISTORY_TAG})
# A line this old when its batch is handled is history the server or a bouncer replayed (or a
# queue long backed up): answering it now would answer a conversation that has moved on.
STALE_AFTER = timedelta(minutes=10)
# Characters of a nick (RFC 2812 plus "-"), folded: what may not touch a nick named "anywhere".
_NICK_CHARS = r"a-z0-9\[\]\\`_\^\{\|\}~-"


@dataclass(frozen=True)
class _Watcher:
    """An enabled agent as the matcher needs it."""

    agent: Agent
    folded: str
    anywhere: re.Pattern[str] | None


def _watcher(agent: Agent) -> _Watcher:
    folded = casefold(agent.nick)
    pattern = None
    if agent.answer_anywhere:
        pattern = re.compile(rf"(?<![{_NICK_CHARS}]){re.escape(folded)}(?![{_NICK_CHARS}])")
    return _Watcher(agent=agent, folded=folded, anywhere=pattern)


def addressed_question(nick_folded: str, text: str) -> str | None:
    """The question of `nick: question` or `nick, question` (the nick compared folded), or None
    when the line does not start by addressing that nick."""
    head = text.lstrip()
    if len(head) <= len(nick_folded) or head[len(nick_folded)] not in ":,":
        return None
    if casefold(head[: len(nick_folded)]) != nick_folded:
        return None
    return head[len(nick_folded) + 1 :].strip()


def _cooling_down(*, account_id: uuid.UUID | str, agent: Agent, where: str) -> bool:
    """Take the agent's cool-down for `where`; True when it was already taken (skip the line).
    cache.add is Redis' SET NX EX: one caller wins however many race for it."""
    if not agent.cooldown_seconds:
        return False
    key = f"agent-cooldown:{account_id}:{agent.pk}:{where}"
    return not cache.add(key, 1, timeout=agent.cooldown_seconds)


def _skipped(sender: str, tags: object, agent_nicks: set[str]) -> bool:
    if isinstance(tags, dict) and NO_TRIGGER_TAGS & tags.keys():
        return True
    return casefold(sender) in agent_nicks


def on_lines_stored(account_id: uuid.UUID, message_ids: list[int]) -> None:
    """channels_app.hooks listener: the runs this batch of the account's new lines calls for."""
    agents = list(Agent.objects.all())
    enabled = [a for a in agents if a.enabled]
    if not enabled or not message_ids:
        return
    agent_nicks = {casefold(a.nick) for a in agents}
    watchers = {a.pk: _watcher(a) for a in enabled}
    by_channel: dict[int, list[_Watcher]] = defaultdict(list)
    # Agents speaking through the user's connection also answer `nick: ...` in a private
    # conversation on a server where they sit.
    by_query_server: dict[int, list[_Watcher]] = defaultdict(list)
    through = Agent.channels.through.objects.filter(agent_id__in=watchers).values_list(
        "agent_id", "channel_id", "channel__server_id"
    )
    for agent_id, channel_id, server_id in through:
        watcher = watchers[agent_id]
        by_channel[channel_id].append(watcher)
        speaks_as_user = watcher.agent.presence == Agent.Presence.USER_CONNECTION
        if speaks_as_user and watcher not in by_query_server[server_id]:
            by_query_server[server_id].append(watcher)
    if not by_channel:
        return

    where = Q(channel_id__in=list(by_channel))
    if by_query_server:
        where |= Q(channel__kind=Channel.Kind.QUERY, channel__server_id__in=list(by_query_server))
    lines = (
        Message.objects.filter(where, id__in=message_ids, kind=Message.Kind.MESSAGE)
        .order_by("id")
        .values_list(
            "id", "channel_id", "channel__kind", "channel__server_id", "sender", "text", "tags",
            "server_time",
        )
    )  # fmt: skip
    oldest = timezone.now() - STALE_AFTER
    wanted: list[tuple[_Watcher, int, int, str, str]] = []
    for message_id, channel_id, kind, server_id, sender, text, tags, server_time in lines:
        if server_time < oldest or _skipped(sender, tags, agent_nicks):
            continue
        is_query = kind == Channel.Kind.QUERY
        candidates = by_query_server[server_id] if is_query else by_channel[channel_id]
        folded_text = casefold(text)
        for watcher in candidates:
            question = addressed_question(watcher.folded, text)
            # Named anywhere counts in channels only: a query line must address the agent.
            pattern = None if is_query else watcher.anywhere
            if question is None and pattern is not None and pattern.search(folded_text):
                question = text.strip()
            if not question:
                continue
            if _cooling_down(account_id=account_id, agent=watcher.agent, where=str(channel_id)):
                continue
            wanted.append((watcher, channel_id, message_id, sender, question))
    if not wanted:
        return
    channels = Channel.objects.select_related("server").in_bulk({w[1] for w in wanted})
    for watcher, channel_id, message_id, sender, question in wanted:
        create_task(
            agent=watcher.agent,
            trigger=Task.Trigger.MENTION,
            input=question,
            channel=channels[channel_id],
            requested_by=sender,
            source_message_id=message_id,
        )


def handle_query(*, agent_id: int, server_id: int, nick: str, text: str) -> Task | None:
    """A private message to an agent's own connection: a run answering `nick` there. None when
    it is not for a run: the agent is gone or disabled, the sender is an agent of the account,
    nothing was asked, or the agent is cooling down for that nick."""
    agent = Agent.objects.filter(pk=agent_id, enabled=True).first()
    server = Server.objects.filter(pk=server_id).first()
    text = text.strip()
    if agent is None or server is None or not text or not nick:
        return None
    folded = casefold(nick)
    if any(casefold(n) == folded for n in Agent.objects.values_list("nick", flat=True)):
        return None
    account = current_account()
    account_id = account.pk if account is not None else "public"
    if _cooling_down(account_id=account_id, agent=agent, where=f"query:{folded}"):
        return None
    return create_task(
        agent=agent,
        trigger=Task.Trigger.QUERY,
        input=text,
        server=server,
        reply_to=nick,
        requested_by=nick,
    )


def ask(*, channel: Channel, text: str, requested_by: str) -> Task:
    """`/ask <agent> <question>` typed into `channel`: a run of that agent (named by nick or by
    name, either case) answering there. Raises CommandError saying what is wrong."""
    text = text.strip()
    agents = list(Agent.objects.all())
    first, _, rest = text.partition(" ")
    first = first.rstrip(":,")
    agent: Agent | None = None
    question = ""
    folded = casefold(first)
    for candidate in agents:
        if casefold(candidate.nick) == folded:
            agent, question = candidate, rest
            break
    if agent is None:
        # A name may hold spaces: the longest name the input starts with.
        lowered = text.lower()
        for candidate in sorted(agents, key=lambda a: -len(a.name)):
            name = candidate.name.lower()
            if lowered == name or lowered.startswith(name + " ") or lowered.startswith(name + ":"):
                agent, question = candidate, text[len(name) :].lstrip(":, ")
                break
    if agent is None:
        known = ", ".join(a.nick for a in agents if a.enabled)
        hint = f" Your agents: {known}." if known else " You have no agents yet."
        raise CommandError(f"No agent is called “{first}”.{hint}")
    if not agent.enabled:
        raise CommandError(f"{agent.name} is disabled; enable it on the Agents page first.")
    question = question.strip()
    if not question:
        raise CommandError(f"Ask {agent.nick} something. Usage: /ask {agent.nick} question")
    return create_task(
        agent=agent,
        trigger=Task.Trigger.ASK,
        input=question,
        channel=channel,
        requested_by=requested_by,
    )
