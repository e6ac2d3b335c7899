"""Every write to channels_app's models (and to the chat settings in Account.settings) goes
through a function here, by concern: servers (servers and channels), chat (reading, typing into
a buffer), notifications, settings, history (retention). The gateway's bulk writes of what IRC
says are its own ingest path.

Each service takes keyword-only typed arguments, the acting account among them (`account_id`, or
the Account itself): a service never looks up who acts from a request or the connection. It runs
in one transaction (`@transaction.atomic` at its top), and what it announces (live events to the
browsers, commands to the gateway) is published after that transaction commits.
"""
