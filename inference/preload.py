"""The job's slow imports (arc-stack, which pulls lightning, and scvi), on a background thread.

``python -m inference.stack_job`` starts :class:`Preload` as ``main()`` begins (torch and anndata
are imported by then: two threads importing the same packages at once can deadlock in importlib),
so arc-stack/scvi/lightning load while the main thread parses the spec and reads and checks the
inputs; the job joins it just before loading the model, where a failed import raises its own error.
"""

from __future__ import annotations

import importlib
import threading

# What loading the model and sampling import: seconds, and needed only once the inputs are read.
HEAVY_MODULES = ("stack.model_loading", "scvi.distributions")


class Preload:
    """Import modules on a background thread; ``join`` waits and raises the import's own error."""

    def __init__(self, modules: tuple[str, ...] = HEAVY_MODULES) -> None:
        self.modules = modules
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="preload-imports", daemon=True)

    def _run(self) -> None:
        try:
            for name in self.modules:
                importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - re-raised, unchanged, in the main thread by join()
            self.error = exc

    def start(self) -> Preload:
        self.thread.start()
        return self

    def join(self) -> None:
        """Wait for the imports; an import that failed raises here with its own message."""
        self.thread.join()
        if self.error is not None:
            raise self.error
