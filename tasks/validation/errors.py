"""How an input's problems are reported: :class:`InputValidationError` (path, problem, fix) and the
wording its messages share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class InputValidationError(ValueError):
    """An input the run cannot use. ``path``, ``problem`` and ``fix`` say which, why and what to do."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")

    def __reduce__(self):  # keep the fields when Prefect pickles the exception
        return (type(self), (self.path, self.problem, self.fix))


@contextmanager
def failures_reported(path: str | Path, problem: str, fix: str) -> Iterator[None]:
    """Any error inside becomes ``InputValidationError(path, "<problem> (<error>)", fix)``.

    For reads whose every failure is the input's fault: h5py and anndata raise many kinds
    for damaged files, and the user needs the same message whichever it was.
    """
    try:
        yield
    except InputValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        raise InputValidationError(path, f"{problem} ({type(exc).__name__}: {exc})", fix) from None


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
