"""The one exception type the library raises for bad user input.

Command-line entry points catch it and print its message as a single line, so
every message must name the file, key or shape at fault.
"""


class UnetslError(ValueError):
    """A user-facing error: bad config, bad file, bad shape."""
