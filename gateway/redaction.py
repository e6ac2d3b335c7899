"""Passwords in our own messages to network services, hidden before a line is stored.

The NickServ fallback sends `IDENTIFY account password`, and people type `/msg NickServ
IDENTIFY ...`, `REGISTER password email`, `GHOST nick password`, `/msg Q AUTH ...`. With
echo-message the server sends such a line back to us like any other; kept as it is, the password
would be stored, streamed to browsers and indexed for search. Like WeeChat's hide_password and
irssi's masking, the command word stays (so the buffer shows what was done) and the rest
becomes asterisks.
"""

import re

MASK = "********"

# Services on the common networks: *Serv (Atheme, Anope), Q (QuakeNet), X (Undernet), with or
# without their @server suffix.
_SERVICE = re.compile(r"^(?:[a-z]*serv|q|x)(?:@\S+)?$", re.IGNORECASE)
# The command words (a few after SET); the group ends where the secret-bearing arguments start.
_SECRET = re.compile(
    r"^(\s*(?:identify|id|register|ghost|release|regain|recover|login|auth|group|"
    r"(?:set\s+)?pass(?:word)?|(?:set\s+)?newpass))(?=\s)\s+\S.*$",
    re.IGNORECASE | re.DOTALL,
)


def hide_secrets(target: str, text: str) -> str:
    """`text` as stored when we send it to `target`: unchanged unless it is a command carrying a
    password to a network service."""
    if not _SERVICE.match(target):
        return text
    return _SECRET.sub(lambda m: f"{m.group(1)} {MASK}", text)
