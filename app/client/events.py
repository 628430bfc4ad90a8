"""Server-Sent Events as the client reads them (`GET /train/{version}/events`): the WHATWG line format."""

import json
from collections.abc import Iterator
from typing import Any


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, str | None, Any]]:
    """(event, id, JSON data) of each Server-Sent Event in `lines` (the WHATWG format: fields until a blank line)."""
    event, event_id, data = "message", None, []
    for line in lines:
        if not line:
            if data:
                yield event, event_id, json.loads("\n".join(data))
            event, data = "message", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
    if data:
        yield event, event_id, json.loads("\n".join(data))
