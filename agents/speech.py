"""How an agent's words reach IRC: one AgentSay command per line to the gateway, which sends it
through the agent's own connection or the user's (agents.Agent.presence)."""

import uuid

from channels_app.events import AgentSay, publish_command, redis_client


def say(
    *,
    account_id: uuid.UUID | str,
    agent_id: int,
    server_id: int,
    target: str,
    text: str,
    kind: str = "message",
) -> None:
    """Say one line now (not after a commit: a run streams its answer as it is written).
    Raises on a Redis failure; the caller decides what the run makes of it."""
    publish_command(
        AgentSay(
            account_id=str(account_id),
            server_id=server_id,
            agent_id=agent_id,
            target=target,
            text=text,
            kind=kind,  # type: ignore[arg-type]  # AgentSay's parse checks it at the gateway
        ),
        client=redis_client(),
    )
