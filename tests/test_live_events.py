"""channels_app.events: the typed live events and gateway commands keep the JSON on the wire that
static/js/chat.js, the SSE stream and the gateway read."""

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from channels_app import events, sse

CHAT_JS = Path(__file__).resolve().parent.parent / "static" / "js" / "chat.js"
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
ACCOUNT = str(uuid.uuid4())


def wire(event: events.LiveEvent) -> dict[str, object]:
    return json.loads(events.encode_event(event))


def test_each_event_type_has_the_json_the_browser_reads() -> None:
    message = events.MessageEvent(id=7, channel_id=3, server_id=2, kind="message",
                                  sender="carol", text="hi", server_time=WHEN, msgid="abc",
                                  highlight=True)  # fmt: skip
    assert events.encode_event(message) == (
        '{"type":"message","id":7,"channel_id":3,"server_id":2,"kind":"message",'
        '"sender":"carol","text":"hi","server_time":"2026-01-02T03:04:05.678000+00:00",'
        '"msgid":"abc","highlight":true}'
    )
    assert wire(events.ChannelEvent(channel_id=3, server_id=2)) == {
        "type": "channel", "channel_id": 3, "server_id": 2,
    }  # fmt: skip
    state = events.ServerStateEvent(server_id=2, state="disconnected", error="refused",
                                    next_retry=WHEN, nick="alice")  # fmt: skip
    assert wire(state) == {
        "type": "server_state", "server_id": 2, "state": "disconnected", "error": "refused",
        "next_retry": "2026-01-02T03:04:05.678000+00:00", "nick": "alice",
    }  # fmt: skip
    connected = events.ServerStateEvent(server_id=2, state="connected", error="",
                                        next_retry=None, nick="alice")  # fmt: skip
    assert wire(connected)["next_retry"] is None
    assert wire(events.NotificationEvent(id=9, message_id=7, kind="highlight")) == {
        "type": "notification", "id": 9, "message_id": 7, "kind": "highlight",
    }  # fmt: skip
    assert wire(events.ReadEvent(channel_id=3, up_to=7)) == {
        "type": "read", "channel_id": 3, "up_to": 7,
    }  # fmt: skip
    assert wire(events.PreviewEvent(message_id=7, channel_id=3)) == {
        "type": "preview", "message_id": 7, "channel_id": 3,
    }  # fmt: skip


def test_the_fields_chat_js_reads_are_on_the_wire() -> None:
    """Every `payload.<field>` chat.js reads is sent by some event: a renamed field fails here."""
    read = set(re.findall(r"\bpayload\.([a-z_]+)", CHAT_JS.read_text()))
    assert read, "chat.js no longer reads payload fields this way; update this test"
    samples: list[events.LiveEvent] = [
        events.MessageEvent(id=1, channel_id=1, server_id=1, kind="message", sender="a",
                            text="t", server_time=WHEN, msgid="", highlight=False),
        events.ChannelEvent(channel_id=1, server_id=1),
        events.ServerStateEvent(server_id=1, state="connected", error="", next_retry=None,
                                nick="n"),
        events.NotificationEvent(id=1, message_id=1, kind="private"),
        events.ReadEvent(channel_id=1, up_to=1),
        events.PreviewEvent(message_id=1, channel_id=1),
        events.SendErrorEvent(server_id=1, cid="c1", reason="#c: You're not channel operator"),
    ]  # fmt: skip
    sent = {field for sample in samples for field in wire(sample)}
    assert read <= sent, f"chat.js reads fields no event sends: {read - sent}"
    listened = set(re.findall(r'addEventListener\("([a-z_]+)"', CHAT_JS.read_text()))
    assert listened >= events.EVENT_TYPES


def test_the_stream_forwards_exactly_the_typed_events() -> None:
    assert sse.EVENT_TYPES is events.EVENT_TYPES
    assert {
        "message",
        "channel",
        "server_state",
        "notification",
        "read",
        "preview",
        "send_error",
    } == events.EVENT_TYPES


def test_a_replayed_row_is_the_same_event_as_the_stored_line() -> None:
    row = {"id": 7, "channel_id": 3, "server_id": 2, "kind": "action", "sender": "carol",
           "text": "waves", "server_time": WHEN, "msgid": "", "highlight": False}  # fmt: skip
    assert events.event_payload(events.MessageEvent.from_row(row)) == {
        "type": "message", **row, "server_time": WHEN.isoformat(),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("command", "payload"),
    [
        (events.SendCommand(account_id=ACCOUNT, server_id=4, target="#c", text="hi",
                            kind="action"),
         {"op": "send", "account_id": ACCOUNT, "server_id": 4, "target": "#c", "text": "hi",
          "kind": "action"}),
        (events.RawCommand(account_id=ACCOUNT, server_id=4, line="JOIN #c"),
         {"op": "raw", "account_id": ACCOUNT, "server_id": 4, "line": "JOIN #c"}),
        (events.RawCommand(account_id=ACCOUNT, server_id=4, line="TOPIC #c :x", cid="c1-x_"),
         {"op": "raw", "account_id": ACCOUNT, "server_id": 4, "line": "TOPIC #c :x",
          "cid": "c1-x_"}),
        (events.ServersChanged(account_id=ACCOUNT),
         {"op": "servers_changed", "account_id": ACCOUNT}),
        (events.SettingsChanged(account_id=ACCOUNT),
         {"op": "settings_changed", "account_id": ACCOUNT}),
    ],
)  # fmt: skip
def test_gateway_commands_seal_open_and_parse_back(
    command: events.GatewayCommand, payload: dict[str, object]
) -> None:
    assert events.command_payload(command) == payload
    opened = events.open_command(events.seal_command(command))
    assert opened == payload
    assert events.parse_command(opened) == command


@pytest.mark.parametrize(
    "payload",
    [
        {"op": "servers_changed", "account_id": "not-a-uuid"},
        {"op": "reboot", "account_id": ACCOUNT},
        {"op": "send", "account_id": ACCOUNT, "server_id": 1, "target": "#c"},
        {"op": "send", "account_id": ACCOUNT, "server_id": 1, "target": "#c", "text": "x",
         "kind": "ctcp"},
        {"op": "raw", "account_id": ACCOUNT, "server_id": "one", "line": "QUIT"},
    ],
)  # fmt: skip
def test_a_malformed_command_parses_to_nothing(payload: dict[str, object]) -> None:
    assert events.parse_command(payload) is None


def test_a_send_without_a_kind_is_a_message() -> None:
    command = events.parse_command(
        {"op": "send", "account_id": ACCOUNT, "server_id": 1, "target": "#c", "text": "x"}
    )
    assert command == events.SendCommand(account_id=ACCOUNT, server_id=1, target="#c", text="x")


@pytest.mark.parametrize("cid", ["", "a b", "x" * 41, "<img>", "c\n1", None])
def test_a_command_with_a_malformed_cid_parses_without_one(cid: object) -> None:
    """The cid goes back to the browser in a send_error event: only a short token passes."""
    payload = {"op": "send", "account_id": ACCOUNT, "server_id": 4, "target": "#c",
               "text": "hi", "cid": cid}  # fmt: skip
    command = events.parse_command(payload)
    assert isinstance(command, events.SendCommand)
    assert command.cid == ""
