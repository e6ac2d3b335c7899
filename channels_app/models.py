"""An account's IRC world, in the account's schema: servers, channels, who is in them, what
was said, and what the user should look at."""

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower

from channels_app.validators import (
    validate_channel_name,
    validate_host,
    validate_nick,
    validate_username,
)
from core.fields import EncryptedTextField


class Server(models.Model):
    name = models.CharField(max_length=100, help_text="Your label for it, e.g. Libera.")
    host = models.CharField(max_length=253, validators=[validate_host])
    port = models.PositiveIntegerField(
        default=6697, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    tls = models.BooleanField("TLS", default=True)
    tls_verify = models.BooleanField(
        "Verify TLS certificate",
        default=True,
        help_text="Turn off only for a server with a self-signed certificate you trust.",
    )
    nick = models.CharField(max_length=30, validators=[validate_nick])
    alt_nicks = ArrayField(
        models.CharField(max_length=30, validators=[validate_nick]),
        default=list,
        blank=True,
        help_text="Tried in order when the nick is taken.",
    )
    username = models.CharField(max_length=32, blank=True, validators=[validate_username])
    realname = models.CharField("Real name", max_length=200, blank=True)
    password = EncryptedTextField("Server password", blank=True)
    sasl_username = models.CharField("SASL account", max_length=100, blank=True)
    sasl_password = EncryptedTextField("SASL password", blank=True)
    autoconnect = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="server_name_unique_ci"),
            models.CheckConstraint(
                condition=models.Q(port__gte=1, port__lte=65535), name="server_port_range"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def address(self) -> str:
        return f"{self.host}:{'+' if self.tls else ''}{self.port}"


class Channel(models.Model):
    """A buffer: a channel on a server, or a query (a conversation with one person)."""

    class Kind(models.TextChoices):
        CHANNEL = "channel", "Channel"
        QUERY = "query", "Query"
        # The server's own notices, MOTD and replies; created by the gateway, one per server.
        SERVER = "server", "Server messages"

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="channels")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CHANNEL)
    name = models.CharField(max_length=50)
    key = EncryptedTextField("Channel key", blank=True)
    autojoin = models.BooleanField(default=True)
    topic = models.TextField(blank=True)
    # The newest message the user has seen here; unread counts are the messages after it.
    last_read_message_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["server__name", "name"]
        constraints = [
            models.UniqueConstraint("server", Lower("name"), name="channel_name_unique_ci"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if self.kind == self.Kind.CHANNEL:
            validate_channel_name(self.name)
        elif self.kind == self.Kind.QUERY:
            validate_nick(self.name)


class ChannelUser(models.Model):
    """Someone present in a channel, as the server last told us."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="members")
    nick = models.CharField(max_length=30)
    prefixes = models.CharField(max_length=10, blank=True, help_text="Mode prefixes, e.g. @+")
    away = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint("channel", Lower("nick"), name="channel_user_unique_ci"),
        ]

    def __str__(self) -> str:
        return f"{self.prefixes}{self.nick}"


class Message(models.Model):
    class Kind(models.TextChoices):
        MESSAGE = "message"
        NOTICE = "notice"
        ACTION = "action"
        JOIN = "join"
        PART = "part"
        QUIT = "quit"
        KICK = "kick"
        NICK = "nick"
        MODE = "mode"
        TOPIC = "topic"
        SYSTEM = "system"

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="messages")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.MESSAGE)
    sender = models.CharField(max_length=100, blank=True)
    text = models.TextField(blank=True)
    server_time = models.DateTimeField(help_text="When the server says it happened.")
    msgid = models.CharField(max_length=128, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["server_time", "id"]
        indexes = [
            # Latest N lines of a channel, and keyset pagination backwards from a line.
            models.Index(fields=["channel", "-server_time", "-id"], name="message_channel_latest"),
            # Pruning by age across the account.
            models.Index(fields=["server_time"], name="message_time"),
            # Full-text search over what was said and who said it; the query must use the same
            # expression (channels_app.selectors.search.SEARCH_VECTOR).
            GinIndex(SearchVector("text", "sender", config="simple"), name="message_search"),
            # De-duplicating lines replayed by the server.
            models.Index(
                fields=["channel", "msgid"],
                name="message_msgid",
                condition=~models.Q(msgid=""),
            ),
        ]

    def __str__(self) -> str:
        return f"<{self.sender}> {self.text[:50]}"


class Notification(models.Model):
    class Kind(models.TextChoices):
        HIGHLIGHT = "highlight"
        PRIVATE = "private", "Private message"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    read_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["-created_at"],
                name="notification_unread",
                condition=models.Q(read_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.message_id}"
