"""The one error type a user sees: a bad config, a missing file, an unknown name.

The CLI turns it into a single line on stderr and exit code 2; the Python API lets it
propagate like any ValueError.
"""
import errno


class DglkdError(ValueError):
    """A problem with the user's input, explained in one line."""


def describe_validation_error(exc: Exception, prefix: str = "",
                              allowed: list[str] | None = None) -> str:
    """One line naming the first offending key of a pydantic ValidationError."""
    first = exc.errors()[0]  # type: ignore[attr-defined]
    key = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    message = first["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {quoted(first.get('input'))})"


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quoted(value: object) -> str:
    """A user's value as an error message shows it: its repr, cut at 80 characters."""
    return shorten(repr(value))


# What a user can do about the file-system errors a run meets.
_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free space or point --out / cache_dir elsewhere",
    errno.EDQUOT: "the disk quota is used up; free space or point --out / cache_dir elsewhere",
    errno.EROFS: "a read-only file system; point --out / cache_dir at a writable folder",
    errno.EACCES: "permission denied; point --out / cache_dir at a folder you may write",
    errno.EPERM: "operation not permitted; point --out / cache_dir at a folder you may write",
    errno.ENAMETOOLONG: "the name is too long for the file system; shorten name, --out or "
                        "cache_dir",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EEXIST: "a file stands where a folder is needed",
    errno.ENOENT: "no such file or folder (a parent is missing or cannot hold folders)",
    errno.EISDIR: "a folder stands where a file is needed",
}


def describe_os_error(exc: OSError) -> str:
    """One line: the path, what went wrong, and what to do."""
    path = shorten(str(exc.filename)) if exc.filename is not None else "file system"
    hint = _OS_HINTS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return printable(f"{path}: {hint}")


def printable(text: str) -> str:
    """``text`` on one line: control characters and line breaks shown escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
