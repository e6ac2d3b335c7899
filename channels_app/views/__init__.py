"""The channels app's pages, by concern: servers (servers and channels), chat, search,
notifications, settings. Views are thin: they read through channels_app.selectors and write
through channels_app.services."""
