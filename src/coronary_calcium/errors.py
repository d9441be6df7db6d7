"""The one exception type for bad input: the command line prints its message and exits non-zero."""


class InputError(ValueError):
    """Bad user input: a file, a manifest entry, a parameter. The message names the item and the problem."""

    def __init__(self, item: object, problem: str):
        self.item = str(item)
        self.problem = problem
        super().__init__(f"{self.item}: {problem}")


def find_input_error(exc: BaseException | None) -> InputError | None:
    """The `InputError` behind an exception that another layer (MONAI's config parser, Ignite) wrapped, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
