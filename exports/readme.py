"""README.txt, the first file of every archive: what is where, and what is left out."""

from datetime import datetime

TEMPLATE = """\
Your data from Palaver
======================

Account:    {account}
Exported:   {exported} (times in this archive's logs are in {zone};
            the JSON files give every time in UTC, ISO 8601)
Format:     version {version}

Everything is plain text (UTF-8): open it with any text editor, or read the JSON files
with a program.

What is where
-------------

logs/<network>/<channel>/<YYYY-MM-DD>.log
    Each channel's and conversation's history, one file per day, the way IRC clients and
    bouncers (ZNC, irssi, The Lounge) write their logs:
        [14:05:09] <nick> what they said
        [14:05:12] * nick does something            (an action, /me)
        [14:05:15] -nick- a notice
        [14:06:00] *** Joins: nick (user@host)
        [14:06:30] *** Parts: nick (reason)
        [14:07:00] *** Quits: nick (reason)
        [14:07:10] *** victim was kicked by nick (reason)
        [14:08:00] *** nick is now known as newnick
        [14:08:30] *** nick sets mode: +o someone
        [14:09:00] *** nick changes topic to 'the topic'
    <network> is the name you gave the server. Characters some systems do not allow in
    file names (/ \\ : * ? " < > | and %) are written as %XX, their UTF-8 bytes in hex:
    a channel "#a/b" is in the folder "#a%2Fb". Colours and bold are left out of the logs.

history/<network>/<channel>.jsonl
    The same history, one JSON object per line, with every field as stored (the text with
    its IRC formatting codes, the server's message id and tags).

servers.json      Your IRC servers and their channels and conversations.
agents.json       Your agents, with their channels, tools, knowledge bases and schedules.
tasks.jsonl       Every agent run: what it was asked, what it answered, its tool calls.
usage.jsonl       Every call to a language model: tokens, time taken, outcome.
knowledge.json    Your knowledge bases and their documents;
knowledge/<base>/ each document's text (.txt) and, under originals/, the file as you
                  uploaded or imported it.
account.json      Your account: its name, settings, people, and its configuration of
                  language model providers and tools.

What is not in it
-----------------

No secret is in this archive, not even encrypted: IRC server passwords, SASL passwords,
channel keys and language model providers' API keys are left out (the JSON says only
whether one is set, e.g. "password_set": true), and so are password hashes, signed-in
sessions and access tokens. Keep your own copy of those if you move elsewhere.

Also left out: files sent into the chat (their links are in the history), notifications,
who was in a channel at the time of the export, and the search index of knowledge
documents (it is made from their text again).
"""


def readme(*, account: str, exported: datetime, zone: str, version: int) -> str:
    return TEMPLATE.format(
        account=account,
        exported=exported.strftime("%Y-%m-%d %H:%M UTC"),
        zone=zone,
        version=version,
    )
