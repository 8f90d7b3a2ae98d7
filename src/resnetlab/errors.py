"""User-facing errors: the CLI prints their message as one line on stderr and exits non-zero."""

import re


class ResnetlabError(Exception):
    """An error caused by the user's input (a path, an option, a file's content).

    The message must name the file or option and say what is wrong and, where possible, what to do.
    """


class DataError(ResnetlabError):
    """Bad or missing data: unreadable path, wrong checksum, corrupt image, empty class folder..."""


class ConfigError(ResnetlabError):
    """A bad recipe key, an unknown option value, or conflicting options."""


class CheckpointError(ResnetlabError):
    """A checkpoint or model file that is missing, incomplete, corrupt or unsafe to load."""


# torch's weights_only refusal advises re-running with weights_only=False (or allow-listing the
# globals): the very step that lets a hostile pickle run its code. Our messages never pass it on.
_UNSAFE_ADVICE = re.compile(r"weights_only\W+(set to\W+)?False|safe_globals|trusted source|can still be loaded|"
                            r"do those steps only", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def load_refusal_reason(exc: BaseException) -> str:
    """One line saying why a file could not be loaded, without advice to load it unsafely.

    For torch's ``weights_only`` refusal it names the blocked global (what the file tried to import).
    """
    text = str(exc)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if "Weights only load failed" in text or type(exc).__name__ == "UnpicklingError":
        found = f" ({blocked.group(1)})" if blocked else ""
        return f"UnpicklingError: it holds pickled objects other than tensors{found}; nothing in it was run"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = strip_unsafe_advice(lines[0]) if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def strip_unsafe_advice(message: str) -> str:
    """``message`` without sentences that advise loading a refused file with ``weights_only=False``."""
    if not _UNSAFE_ADVICE.search(message):
        return message
    return " ".join(s for s in _SENTENCE_END.split(message) if not _UNSAFE_ADVICE.search(s)).strip()
