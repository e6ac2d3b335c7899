from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings

from accounts.models import Account
from channels_app.models import Channel, Server
from channels_app.selectors.search import MAX_QUERY_LENGTH
from channels_app.selectors.settings import (
    MAX_RETENTION_DAYS,
    MIN_RETENTION_DAYS,
    THEMES,
    TIME_FORMATS,
    clean_highlight_words,
    highlight_words,
    link_previews,
    retention_days,
    theme,
    time_format,
)
from channels_app.validators import validate_channel_name, validate_nick
from core import net_policy
from core.forms import ModelChoiceField, SecretFieldsMixin


@dataclass(frozen=True)
class Network:
    """A well-known network: the "Add a server" form fills in its address."""

    label: str
    host: str
    port: int


# TLS on 6697 on all three (Libera.Chat's and OFTC's connection guides; EFnet's round robin
# servers listen for TLS on 6697 and 9999).
NETWORKS: dict[str, Network] = {
    "libera": Network("Libera.Chat", "irc.libera.chat", 6697),
    "oftc": Network("OFTC", "irc.oftc.net", 6697),
    "efnet": Network("EFnet", "irc.efnet.org", 6697),
}
CUSTOM_NETWORK = "custom"


def split_channel_names(raw: str) -> list[str]:
    """Channel names typed as "#a #b, #c": validated, duplicates (ignoring case) dropped.
    Raises ValidationError naming the first bad one."""
    names: list[str] = []
    seen: set[str] = set()
    for name in raw.replace(",", " ").split():
        try:
            validate_channel_name(name)
        except forms.ValidationError:
            raise forms.ValidationError(
                f"“{name[:60]}” is not a channel name: a channel starts with #, &, + or ! and "
                "has no spaces, commas or colons.",
                code="invalid_channel",
            ) from None
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    return names


class ServerForm(SecretFieldsMixin):
    """A server, and when adding one, everything to connect in one step: a network preset (or a
    custom address), the nick, and the channels to join."""

    secret_fields = ("password", "sasl_password")

    network = forms.ChoiceField(
        label="Network",
        choices=[
            *((key, f"{n.label} ({n.host})") for key, n in NETWORKS.items()),
            (CUSTOM_NETWORK, "Custom: another server"),
        ],
        initial="libera",
        # Left out of a POST (a script's), it is a custom server.
        required=False,
        help_text=(
            "A known network fills in the address, port and TLS for you (unless you type an "
            "address)."
        ),
    )
    alt_nicks = forms.CharField(
        label="Alternative nicks",
        required=False,
        help_text="Separated by spaces or commas; tried in order when your nick is taken.",
    )
    channels = forms.CharField(
        label="Channels to join",
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "#python #palaver", "spellcheck": "false"}),
        help_text="Separated by spaces or commas. Joined as soon as you are connected.",
    )

    class Meta:
        model = Server
        fields = [
            "name",
            "host",
            "port",
            "tls",
            "tls_verify",
            "nick",
            "username",
            "realname",
            "sasl_username",
            "autoconnect",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.is_bound:
            self.initial["alt_nicks"] = " ".join(self.instance.alt_nicks)
        if self.instance.pk:
            # Editing: the address is the server's; its channels are managed on its page.
            del self.fields["network"]
            del self.fields["channels"]
        else:
            self.fields["name"].help_text = "Your label for it; the network's name if blank."
            self.fields["host"].help_text = "For another server: e.g. irc.example.org."
            self.fields["host"].error_messages["required"] = (
                "A custom server needs its address, e.g. irc.example.org."
            )
        self.order_fields(
            [
                "network",
                "name",
                "host",
                "port",
                "tls",
                "tls_verify",
                "nick",
                "alt_nicks",
                "channels",
                "username",
                "realname",
                "password",
                "clear_password",
                "sasl_username",
                "sasl_password",
                "clear_sasl_password",
                "autoconnect",
            ]
        )

    def clean_alt_nicks(self) -> list[str]:
        raw = self.cleaned_data.get("alt_nicks") or ""
        nicks = [n for n in raw.replace(",", " ").split() if n]
        for nick in nicks:
            try:
                validate_nick(nick)
            except forms.ValidationError:
                raise forms.ValidationError(f"“{nick}” is not a valid nick.") from None
        if len(nicks) > 10:
            raise forms.ValidationError("Ten alternative nicks at most.")
        return nicks

    def full_clean(self) -> None:
        """Validated with the network's values filled in (_filled_data); shown again as typed,
        so that a preset's address never reappears in the Host field as if typed."""
        if not self.is_bound or self.instance.pk:
            super().full_clean()
            return
        typed = self.data
        self.data = self._filled_data()
        try:
            super().full_clean()
        finally:
            self.data = typed

    def _filled_data(self) -> Any:
        """A known network without an address typed: its address, port and TLS, and its name
        when none is given, as if typed (so the fields stay required, and a posted address,
        typed by someone who chose no preset or by a script, is what is used)."""
        data = self.data.copy()  # type: ignore[attr-defined]  # a QueryDict or a dict
        field = self.add_prefix
        network = NETWORKS.get(str(data.get(field("network")) or ""))
        host = str(data.get(field("host")) or "").strip()
        if network is not None and not host:
            data[field("host")] = host = network.host
            data[field("port")] = str(network.port)
            data[field("tls")] = "on"
            data[field("tls_verify")] = "on"
        if not str(data.get(field("name")) or "").strip() and host:
            data[field("name")] = network.label if network and host == network.host else host
        if not str(data.get(field("port")) or "").strip():
            data[field("port")] = "6697"
        return data

    def clean_channels(self) -> list[str]:
        names = split_channel_names(self.cleaned_data.get("channels") or "")
        limit = settings.LIMIT_CHANNELS_PER_SERVER
        if len(names) > limit:
            raise forms.ValidationError(f"{limit} channels per server at most.")
        return names

    def clean_name(self) -> str:
        name = str(self.cleaned_data.get("name") or "").strip()
        if Server.objects.filter(name__iexact=name).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError(
                f"You already have a server named “{name}”: give this one another name.",
                code="duplicate_name",
            )
        return name

    def clean_host(self) -> str:
        host = str(self.cleaned_data["host"]).strip().lower()
        try:
            # The port plays no part in the address policy.
            net_policy.resolve(host, 6667)
        except net_policy.AddressRefused as exc:
            raise forms.ValidationError(
                f"Palaver does not connect to this host ({exc}).", code="refused_host"
            ) from None
        except net_policy.ResolutionFailed:
            # Accepted: whether a name resolves is not a safety question (the gateway checks
            # again at every connect and says so in the server buffer), and DNS seen from the
            # web may differ from the gateway's or be down for a moment.
            pass
        return host

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("sasl_username") and not (
            cleaned.get("sasl_password") or self.instance.sasl_password
        ):
            self.add_error("sasl_password", "SASL needs a password.")
        return cleaned


class ChannelForm(SecretFieldsMixin):
    secret_fields = ("key",)

    class Meta:
        model = Channel
        fields = ["kind", "name", "autojoin"]
        help_texts = {"name": "A channel such as #python, or a nick for a private conversation."}

    def __init__(self, *args: Any, server: Server, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance.server = server
        # The server buffer is the gateway's; people add channels and conversations.
        self.fields["kind"].choices = [  # type: ignore[attr-defined]
            (Channel.Kind.CHANNEL, "Channel"),
            (Channel.Kind.QUERY, "Conversation with one person"),
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("kind") == Channel.Kind.QUERY and cleaned.get("key"):
            self.add_error("key", "A private conversation has no key.")
        name = cleaned.get("name")
        if (
            name
            and Channel.objects.filter(server=self.instance.server, name__iexact=name)
            .exclude(pk=self.instance.pk)
            .exists()
        ):
            self.add_error("name", f"{name} is already in this server's list.")
        return cleaned


class ChatSettingsForm(forms.Form):
    highlight_words = forms.CharField(
        label="Highlight words",
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false"}),
        help_text=(
            "One word or phrase per line. A line that contains one, or your nick, notifies you. "
            "Case does not matter."
        ),
    )
    history_retention_days = forms.IntegerField(
        label="Keep history for (days)",
        required=False,
        min_value=MIN_RETENTION_DAYS,
        max_value=MAX_RETENTION_DAYS,
        help_text=(
            f"Lines older than this are deleted, hourly. Leave blank to keep everything forever "
            f"(at most {MAX_RETENTION_DAYS} days)."
        ),
    )

    time_format = forms.ChoiceField(
        label="Times of day",
        choices=list(TIME_FORMATS.items()),
        required=False,  # left out of a POST: unchanged
        help_text="How times are shown in the chat, search and notifications.",
    )
    theme = forms.ChoiceField(label="Theme", choices=list(THEMES.items()), required=False)
    link_previews = forms.BooleanField(
        label="Link previews",
        required=False,
        help_text=(
            "Show the title, description and image of links posted in your channels. Palaver "
            "fetches them and serves the images itself, so no one learns your address."
        ),
    )

    @classmethod
    def for_account(cls, account: Account, data: Any = None) -> "ChatSettingsForm":
        days = retention_days(account)
        return cls(
            data,
            initial={
                "highlight_words": "\n".join(highlight_words(account)),
                "history_retention_days": days,
                "time_format": time_format(account),
                "theme": theme(account),
                "link_previews": link_previews(account),
            },
        )

    def clean_highlight_words(self) -> list[str]:
        return clean_highlight_words(self.cleaned_data["highlight_words"].splitlines())


class ChannelChoiceField(ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        if obj.kind == Channel.Kind.SERVER:
            return f"{obj.server.name} · server messages"
        return f"{obj.server.name} · {obj.name}"


class SearchForm(forms.Form):
    q = forms.CharField(
        label="Search",
        required=False,
        max_length=MAX_QUERY_LENGTH,
        widget=forms.TextInput(
            attrs={"placeholder": "e.g. deploy -staging", "enterkeyhint": "search"}
        ),
        help_text=(
            '"exact phrase", -left out, this OR that. Words match whole: search for deploy, '
            "not dep."
        ),
    )
    channel = ChannelChoiceField(
        # only(): the channel key and server passwords would be decrypted for nothing.
        queryset=Channel.objects.select_related("server")
        .only("id", "name", "kind", "server__name")
        .order_by("server__name", "name"),
        required=False,
        empty_label="All channels",
    )
    nick = forms.CharField(label="Said by", required=False, max_length=100)
    since = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    before = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean_nick(self) -> str:
        return str(self.cleaned_data["nick"]).strip()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", "The end date comes before the start date.")
        return cleaned
