"""The one exception type for errors a user can cause (bad config, bad data, bad paths)."""


class PPNetError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero.

    The message must name the file, column or config key at fault and what was expected, so the
    user can fix the input without reading a traceback. Bugs raise ordinary exceptions instead.
    """

    def _render_traceback_(self) -> list[str]:
        """IPython's hook for how an exception is shown: in Jupyter, as on the command line, the one
        line and no traceback (the cell still fails, so a notebook run stops there)."""
        return [str(self)]
