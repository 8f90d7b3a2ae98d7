"""``--budget`` durations: ``90s``, ``10m``, ``1h30m``, ``1.5h`` -> seconds."""

from __future__ import annotations

import math
import re

from resnetlab.errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str, option: str = "--budget") -> float:
    """Seconds in ``text``: one or more ``<number><h|m|s>`` parts, largest unit first, no repeats.

    A bare number is refused: "10" could mean seconds or minutes, and a wrong guess wastes a run.
    """
    compact = str(text).strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    units = [unit for _, unit in parts]
    well_formed = parts and "".join(f"{n}{u}" for n, u in parts) == compact and units == sorted(set(units), key="hms".index)
    if not well_formed:
        raise ConfigError(f"{option} {text!r}: expected a duration such as 90s, 10m or 1h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{option} {text!r}: must be longer than 0 seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """``754.2`` -> ``12m34s`` (whole seconds; for messages)."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def process_age() -> float:
    """Seconds since this process started (Linux /proc), so a budget also counts interpreter start-up and imports.

    0.0 where /proc is not available: the budget then counts from the first call.
    """
    import os

    try:
        with open("/proc/self/stat", "rb") as stat, open("/proc/uptime", "rb") as uptime:
            # Field 22 (starttime, clock ticks since boot); the command name before it may hold spaces.
            fields = stat.read().rsplit(b")", 1)[1].split()
            started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
            return max(float(uptime.read().split()[0]) - started, 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0
