"""Errors a user can fix.

Every error a user can act on is a :class:`ForgetlabError`: the CLI prints its message on one line and
exits with code 2, without a traceback. The message names the fix. Anything else is a bug and keeps its
traceback.
"""

import errno
import shlex

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def command(*args) -> str:
    """A ``forgetlab`` command line for the user to paste into a shell: ``forgetlab`` and ``args``, each
    quoted by :func:`shlex.quote` where a shell would split or expand it (``forgetlab run
    'data.tasks=[a, b]'``), so that ``shlex.split`` of it gives back ``["forgetlab", *args]``."""
    return shlex.join(["forgetlab", *map(str, args)])


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


class DiskFullError(ForgetlabError):
    """A write failed for want of space; what was committed stays, and the same command resumes."""

    @classmethod
    def writing(cls, path, strerror: str | None = None) -> "DiskFullError":
        where = f" writing {path}" if path else ""
        return cls(
            f"the disk is full{where} ({strerror or 'No space left on device'}); free space there (or point out_dir "
            "or FORGETLAB_HOME at a larger disk) and run the same "
            "command again: it resumes after the last finished task"
        )
