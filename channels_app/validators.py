"""IRC naming rules (RFC 2812 section 2.3.1, relaxed the way modern servers are)."""

import ipaddress
import re

from django.core.exceptions import ValidationError

# letter or special first; then letters, digits, specials and '-'. 30 is the common NICKLEN.
NICK_RE = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,29}$")
# A channel starts with a prefix; no space, comma, BEL or colon; 50 characters at most.
CHANNEL_RE = re.compile(r"^[#&+!][^\x00\x07\r\n ,:]{1,49}$")
# A host name per RFC 1123: dot-separated labels of letters, digits and inner hyphens.
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# USER's username: no spaces, no '@', kept short like servers do.
USERNAME_RE = re.compile(r"^[^\s@\x00]{1,32}$")


def validate_nick(value: str) -> None:
    if not NICK_RE.match(value):
        raise ValidationError(
            "A nick starts with a letter or one of [ ] \\ ` _ ^ { | }, then letters, digits, "
            "those characters or '-'; 30 characters at most.",
            code="invalid_nick",
        )


def validate_channel_name(value: str) -> None:
    if not CHANNEL_RE.match(value):
        raise ValidationError(
            "A channel name starts with #, &, + or ! and has no spaces, commas or colons; "
            "50 characters at most.",
            code="invalid_channel",
        )


def validate_host(value: str) -> None:
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    host = value[:-1] if value.endswith(".") else value
    if not host or len(host) > 253 or not all(HOST_LABEL_RE.match(p) for p in host.split(".")):
        raise ValidationError(
            "Enter a host name such as irc.libera.chat, or an IP address.", code="invalid_host"
        )


def validate_username(value: str) -> None:
    if not USERNAME_RE.match(value):
        raise ValidationError(
            "A username has no spaces or '@'; 32 characters at most.", code="invalid_username"
        )
