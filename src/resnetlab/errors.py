"""User-facing errors: the CLI prints their message as one line on stderr and exits non-zero."""


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
