"""The one exception type for bad input, and how the command line finds it (or an OS error) behind a wrapper."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, a manifest entry, a parameter. The message names the item and the problem."""

    def __init__(self, item: object, problem: str):
        self.item = str(item)
        self.problem = problem
        super().__init__(f"{self.item}: {problem}")


def _find(exc: BaseException | None, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def find_input_error(exc: BaseException | None) -> InputError | None:
    """The `InputError` behind an exception that another layer (MONAI's config parser, Ignite) wrapped, if any."""
    found = _find(exc, (InputError,))
    return found if isinstance(found, InputError) else None


def find_user_error(exc: BaseException | None) -> InputError | None:
    """The `InputError` behind ``exc``, or one made of the first OS error behind it (a path that exists, is not a
    folder, is not writable, a full disk): the problems a user fixes, as opposed to bugs."""
    found = _find(exc, (InputError, OSError))
    if found is None or isinstance(found, InputError):
        return found
    return os_error(found)  # type: ignore[arg-type]


def os_error(exc: OSError) -> InputError:
    """``exc`` as an `InputError`: the path it names and its reason in words ("No such file or directory")."""
    item = exc.filename if exc.filename is not None else "file system"
    problem = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename2 is not None:
        problem += f" (-> {exc.filename2})"
    return InputError(item, problem[:1].lower() + problem[1:])
