"""The one exception type for bad input: the command line turns it into exit code 2 and one line."""


class BadInput(ValueError):
    """Input the caller can fix: an unknown model, a token out of range, a corrupt file, a bad flag.

    A subclass of ValueError, so library users can catch either.
    """
