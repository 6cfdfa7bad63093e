"""User-facing errors: one line, naming the file or id and what is wrong.

Commands print ``error: <message>`` and exit with status 2 for these; anything else is a bug
and keeps its traceback.
"""


class DeSAMInputError(ValueError):
    """Bad input from the user: a dataset, file, path, option or checkpoint."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line
