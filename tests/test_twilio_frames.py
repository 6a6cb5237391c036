"""The Twilio Media Streams codec: typed events for good frames, None for anything else."""

from __future__ import annotations

import json

import pytest

from app.telephony import twilio_frames as tf

SID = "MZ" + "0" * 32


def frame(event: str, **body: object) -> str:
    return json.dumps({"event": event, "sequenceNumber": "2", "streamSid": SID, **body})


START = frame(
    "start",
    start={
        "accountSid": "AC1",
        "streamSid": SID,
        "callSid": "CA1",
        "tracks": ["inbound"],
        "customParameters": {"caller": "+15551234567", "token": "v1.1.x", "n": 5},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
)


def test_parses_every_event() -> None:
    assert tf.parse(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})) == tf.Connected()
    start = tf.parse(START)
    assert isinstance(start, tf.Start)
    assert (start.call_sid, start.stream_sid, start.encoding, start.sample_rate) == ("CA1", SID, "audio/x-mulaw", 8000)
    # Non-string parameter values are not Twilio's: dropped, the rest kept.
    assert start.custom_parameters == {"caller": "+15551234567", "token": "v1.1.x"}
    payload = "f/9/fw=="
    media = {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload}
    assert tf.parse(frame("media", media=media)) == tf.Media(payload)
    assert tf.parse(frame("mark", mark={"name": "7-3"})) == tf.Mark("7-3")
    assert tf.parse(frame("dtmf", dtmf={"track": "inbound_track", "digit": "#"})) == tf.Dtmf("#")
    assert tf.parse(frame("stop", stop={"accountSid": "AC1", "callSid": "CA1"})) == tf.Stop()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event":"stop"}',
        None,
        "",
        "not json",
        "[1]",
        '"media"',
        frame("media"),
        frame("media", media={}),
        frame("media", media={"payload": 5}),
        frame("media", media={"payload": "abc"}),  # not a multiple of 4
        frame("media", media={"payload": 'ab"}'}),  # would break out of the JSON we build
        frame("media", media="payload"),
        frame("mark", mark={"name": ""}),
        frame("mark", mark={"name": "x" * 200}),
        frame("dtmf", dtmf={"digit": "12"}),
        frame("dtmf", dtmf={"digit": "x"}),
        frame("start", start={"streamSid": SID}),
        frame("start", start={"streamSid": SID, "callSid": "CA1", "customParameters": []}),
        frame("start", start="x"),
        frame("surprise"),
        json.dumps({"no": "event"}),
        frame("media", media={"payload": "A" * (tf.MAX_FRAME_CHARS + 4)}),
    ],
)
def test_garbage_is_none(raw: object) -> None:
    assert tf.parse(raw) is None


def test_outgoing_frames_are_valid_json_with_the_stream_sid() -> None:
    out = tf.Outgoing(SID)
    assert json.loads(out.media("f/9/fw==")) == {"event": "media", "streamSid": SID, "media": {"payload": "f/9/fw=="}}
    assert json.loads(out.mark('odd "name"')) == {"event": "mark", "streamSid": SID, "mark": {"name": 'odd "name"'}}
    assert json.loads(out.clear()) == {"event": "clear", "streamSid": SID}
    # A hostile stream SID cannot break the frame either.
    assert json.loads(tf.Outgoing('x","event":"y').clear())["streamSid"] == 'x","event":"y'
