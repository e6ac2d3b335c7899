"""Writes of the agents app, by concern: agents (the definitions), tasks (runs)."""

from agents.services.agents import delete_agent, save_agent
from agents.services.tasks import create_task

__all__ = ["create_task", "delete_agent", "save_agent"]
