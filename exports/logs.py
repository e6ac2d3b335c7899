"""The plain-text side of an export: file names every operating system accepts, and history
lines in the layout IRC clients and bouncers write (ZNC's log module, irssi, The Lounge's text
logs): `network/channel/YYYY-MM-DD.log`, one line per event, `[HH:MM:SS] <nick> text`."""

import hashlib
import re

from channels_app.formatting import strip_irc_formatting

# Refused or special somewhere: Windows (\ / : * ? " < > | and control characters, names
# ending in a dot or a space), every Unix (/ and NUL), and the percent sign, which escapes them
# here so that two different names never become the same file.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|%]')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
# Bytes of a path component; most file systems allow 255.
_MAX_COMPONENT_BYTES = 150


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode())


def safe_component(name: str) -> str:
    """`name` as one path component, the same on every OS: unsafe characters percent-encoded
    (`#a/b` -> `#a%2Fb`), so the name can be read back; a reserved Windows name or a trailing
    dot or space escaped too; a very long one cut, with a hash of the whole to keep it unique."""
    text = _UNSAFE.sub(lambda m: _escape(m.group()), name) or "%00"
    if text[-1] in ". ":
        text = text[:-1] + _escape(text[-1])
    if text[0] == ".":  # "." and ".." are not names; a leading dot hides a file
        text = _escape(".") + text[1:]
    if _WINDOWS_RESERVED.match(text):
        text = text[:2] + _escape(text[2]) + text[3:]
    if len(text.encode()) > _MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        cut = text.encode()[: _MAX_COMPONENT_BYTES - 13].decode(errors="ignore")
        text = f"{cut}~{digest}"
    return text


def _one_line(text: str) -> str:
    return strip_irc_formatting(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def log_line(*, kind: str, sender: str, text: str, clock: str) -> str:
    """One history line as a client's log writes it, `clock` its time of day (HH:MM:SS in the
    account's zone), ending in \\n."""
    return f"[{clock}] {_event(kind, sender, _one_line(text))}\n"


def _event(kind: str, sender: str, text: str) -> str:
    if kind == "message":
        return f"<{sender}> {text}"
    if kind == "action":
        return f"* {sender} {text}"
    if kind == "notice":
        return f"-{sender}- {text}" if sender else text
    if kind == "join":
        return f"*** Joins: {sender}" + (f" ({text})" if text else "")
    if kind == "part":
        return f"*** Parts: {sender}" + (f" ({text})" if text else "")
    if kind == "quit":
        return f"*** Quits: {sender}" + (f" ({text})" if text else "")
    if kind == "kick":
        victim, _, reason = text.partition(" ")
        return f"*** {victim} was kicked by {sender}" + (f" ({reason})" if reason else "")
    if kind == "nick":
        return f"*** {sender} is now known as {text}"
    if kind == "mode":
        return f"*** {sender} sets mode: {text}"
    if kind == "topic":
        return f"*** {sender} changes topic to '{text}'" if sender else f"*** Topic is '{text}'"
    return f"*** {text}"
