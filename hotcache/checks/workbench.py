"""System checks for workbench sessions (E050-E059). Each message names the setting and the fix."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register

from hotcache.checks._common import (
    beat_entries,
    number_setting_errors,
    range_errors,
)
from hotcache.checks._common import (
    schedule_seconds as _schedule_seconds,
)
from hotcache.checks._common import (
    setting as _setting,
)
from hotcache.conf import hotcache_settings

_MONGO_DOCUMENT_LIMIT = 16 * 1024 * 1024

_WORKBENCH_NUMBERS = (
    "WORKBENCH_IDLE_TIMEOUT",
    "WORKBENCH_MAX_STATE_BYTES",
    "WORKBENCH_PERSIST_IDLE_AFTER",
    "WORKBENCH_PERSIST_INTERVAL",
    "WORKBENCH_CLAIM_TIMEOUT",
    "WORKBENCH_ENDED_TTL",
    "WORKBENCH_PERSIST_BATCH",
)
_WORKBENCH_TASK = "hotcache.tasks.persist_workbench_sessions"


# Python's json (like most JSON libraries) recurses once per level and fails near 1000 levels: a deeper
# limit would let a state through the depth check only to fail in the encoder or in a client's decoder.
_WORKBENCH_DEPTH_CEILING = 512


# A process killed outright loses at most one interval of durable copies: keep that window short.
_DURABLE_INTERVAL_CEILING = 60


@register(Tags.compatibility)
def check_workbench(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not hotcache_settings.enabled("workbench"):
        return []
    numbers = number_setting_errors(_WORKBENCH_NUMBERS, integer=True)
    errors = numbers + range_errors(
        "WORKBENCH_MAX_DEPTH",
        1,
        _WORKBENCH_DEPTH_CEILING,
        f"is not a whole number from 1 to {_WORKBENCH_DEPTH_CEILING}.",
        hint="It bounds how deeply objects and arrays may nest in a workbench state (default 64); save() "
        "refuses deeper states with ValueError before encoding them.",
        check_id="hotcache.E056",
    )
    errors += range_errors(
        "WORKBENCH_DURABLE_INTERVAL",
        0,
        _DURABLE_INTERVAL_CEILING,
        f"is not a number of seconds from 0 to {_DURABLE_INTERVAL_CEILING}.",
        hint="It is how often each process writes its pending durable copies of workbench saves to MongoDB "
        "in one bulk (default 1.0); 0 writes each copy on the request path. A process killed outright "
        "loses at most one interval of copies (the sessions stay in Redis).",
        check_id="hotcache.E057",
        integer=False,
    )
    if numbers:
        return errors  # the relations below need valid numbers
    idle = hotcache_settings.WORKBENCH_IDLE_TIMEOUT
    after = hotcache_settings.WORKBENCH_PERSIST_IDLE_AFTER
    every = hotcache_settings.WORKBENCH_PERSIST_INTERVAL
    claim = hotcache_settings.WORKBENCH_CLAIM_TIMEOUT
    if after + every + claim >= idle:
        errors.append(
            Error(
                f"{_setting('WORKBENCH_PERSIST_IDLE_AFTER')}={after} + {_setting('WORKBENCH_PERSIST_INTERVAL')}"
                f"={every} + {_setting('WORKBENCH_CLAIM_TIMEOUT')}={claim} is not below "
                f"{_setting('WORKBENCH_IDLE_TIMEOUT')}={idle}: an abandoned session could expire in Redis "
                "before the persister moves it to history.",
                hint="Lower WORKBENCH_PERSIST_IDLE_AFTER (default 2700) or raise WORKBENCH_IDLE_TIMEOUT "
                "(default 3600) so that the sum stays below it.",
                id="hotcache.E051",
            )
        )
    size = hotcache_settings.WORKBENCH_MAX_STATE_BYTES
    if size > _MONGO_DOCUMENT_LIMIT - 64 * 1024:
        errors.append(
            Error(
                f"{_setting('WORKBENCH_MAX_STATE_BYTES')}={size} does not fit in a MongoDB document (16 MiB) "
                "with the history record's other fields.",
                hint="Keep it under 16,000,000 (default 1,000,000); large states also cost Redis memory.",
                id="hotcache.E052",
            )
        )
    ended_ttl = hotcache_settings.WORKBENCH_ENDED_TTL
    if ended_ttl <= every + claim:
        errors.append(
            Error(
                f"{_setting('WORKBENCH_ENDED_TTL')}={ended_ttl} is not above {_setting('WORKBENCH_PERSIST_INTERVAL')}"
                f" + {_setting('WORKBENCH_CLAIM_TIMEOUT')} ({every + claim}): an ended session could expire "
                "before the persister (or its recovery run) writes it to history.",
                hint="Use at least a few persister intervals; the default 86400 also rides out a MongoDB outage "
                "of up to a day.",
                id="hotcache.E053",
            )
        )
    for entry in beat_entries():
        if entry.task != _WORKBENCH_TASK:
            continue
        seconds = _schedule_seconds(entry.schedule)
        if seconds is not None and seconds > every:
            errors.append(
                Error(
                    f"{entry.where} runs {_WORKBENCH_TASK} every {seconds:g} s, less often than "
                    f"{_setting('WORKBENCH_PERSIST_INTERVAL')}={every} assumed by the idle timeouts.",
                    hint="Schedule it at least every WORKBENCH_PERSIST_INTERVAL seconds, or raise that setting "
                    "(and keep hotcache.E051 satisfied).",
                    id="hotcache.E054",
                )
            )
    durable = hotcache_settings.WORKBENCH_DURABLE_SAVES
    if not isinstance(durable, bool):
        errors.append(
            Error(
                f"{_setting('WORKBENCH_DURABLE_SAVES')}={durable!r} is not True or False.",
                hint="Use True (default: every save is also copied to MongoDB workbench_active, so sessions stay "
                "loadable during a Redis outage) or False (Redis only; one MongoDB write less per save).",
                id="hotcache.E055",
            )
        )
    return errors
