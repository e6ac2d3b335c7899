"""The IRC gateway: the asyncio process that holds every account's IRC connections
(`manage.py irc_gateway`). `gateway.protocol` is the wire format; it has no models."""
