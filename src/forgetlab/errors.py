"""Errors a user can fix.

Every error a user can act on is a :class:`ForgetlabError`: the CLI prints its message on one line and
exits with code 2, without a traceback. The message names the fix. Anything else is a bug and keeps its
traceback.
"""


class ForgetlabError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""


class ConfigError(ForgetlabError):
    """An unknown key, a wrong type or an invalid value in a config."""


class DataError(ForgetlabError):
    """A dataset, a package holding data, or a file is missing or malformed."""


class MergeError(ForgetlabError):
    """Weight surgery produced non-finite weights; the model is left unchanged."""


class TrainingError(ForgetlabError):
    """Training diverged (a non-finite loss or weight); nothing of the task was committed."""


class RunLockedError(ForgetlabError):
    """Another process is running the same run folder."""
