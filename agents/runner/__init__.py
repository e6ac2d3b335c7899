"""One agent run: context, model calls through the official SDKs, tools, lines to IRC.

`run(task_id)` is what the agents.run_task Celery task calls, inside the account's schema.
"""

from agents.runner.run import run

__all__ = ["run"]
