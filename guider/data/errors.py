class DataError(ValueError):
    """A problem with the input data; the message names the file and the fix."""
