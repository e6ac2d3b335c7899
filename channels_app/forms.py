from typing import Any

from django import forms

from channels_app.models import Channel, Server
from channels_app.validators import validate_nick
from core import net_policy
from core.forms import SecretFieldsMixin


class ServerForm(SecretFieldsMixin):
    secret_fields = ("password", "sasl_password")

    alt_nicks = forms.CharField(
        label="Alternative nicks",
        required=False,
        help_text="Separated by spaces or commas; tried in order when your nick is taken.",
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
        self.order_fields(
            [
                "name",
                "host",
                "port",
                "tls",
                "tls_verify",
                "nick",
                "alt_nicks",
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
