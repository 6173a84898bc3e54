"""The errors a user can cause and fix. The CLI prints their message on one line (never a
traceback) and exits 2, or 1 for a :class:`CheckFailedError`; anything else is a bug and keeps its
traceback."""


class OsteoError(Exception):
    """Bad input, configuration or state; the message names the file, field or object."""


class CheckFailedError(OsteoError):
    """A check the user asked for did not pass (the data failed validation)."""
