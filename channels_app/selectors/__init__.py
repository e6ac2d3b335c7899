"""Reads of an account's chat data, by concern: chat (scrollback, sidebar, members, the live
stream's replay), search, notifications, settings (the chat settings kept in Account.settings).
Nothing here writes; see channels_app.services."""
