from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self) -> None:
        # Every process (gateway, web, workers) learns here what calls an agent: the gateway
        # enqueues stored lines only while a listener is registered, the worker runs it, and
        # the web chat's /ask finds its handler.
        from agents import triggers
        from channels_app import hooks, slash_commands

        hooks.on_message_stored(triggers.on_lines_stored)
        slash_commands.set_ask_handler(triggers.ask)
