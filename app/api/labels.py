"""The `label=key:value` query filter shared by the job and model pages."""

import re
from typing import Annotated

from fastapi import Depends, Query

from app.errors import InvalidInput

_LABEL = re.compile(r"([a-z0-9][a-z0-9._-]{0,62}):([ -~]{0,128})")


def parse_label_filter(label: Annotated[list[str] | None, Query(
        description="`key:value`; repeat to require several labels", max_length=16)] = None) -> list[tuple[str, str]]:
    pairs = []
    for item in label or []:
        match = _LABEL.fullmatch(item)
        if not match:
            raise InvalidInput(f"invalid label filter {item[:80]!r}: use key:value, the key matching "
                               "^[a-z0-9][a-z0-9._-]{0,62}$ and the value up to 128 printable characters",
                               field="label")
        pairs.append((match.group(1), match.group(2)))
    return pairs


LabelFilter = Annotated[list[tuple[str, str]], Depends(parse_label_filter)]
