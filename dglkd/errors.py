"""The one error type a user sees: a bad config, a missing file, an unknown name.

The CLI turns it into a single line on stderr and exit code 2; the Python API lets it
propagate like any ValueError.
"""


class DglkdError(ValueError):
    """A problem with the user's input, explained in one line."""



def describe_validation_error(exc: Exception, prefix: str = "", allowed: list[str] | None = None) -> str:
    """One line naming the first offending key of a pydantic ValidationError."""
    first = exc.errors()[0]  # type: ignore[attr-defined]
    key = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    return f"{key}: {first['msg']} (got {first.get('input')!r})"
