"""The job's slow imports (arc-stack, which pulls lightning, and scvi), on a background thread.

``python -m inference.stack_job`` starts :class:`Preload` as ``main()`` begins (torch and anndata
are imported by then: two threads importing the same packages at once can deadlock in importlib),
so what the run's path needs (arc-stack/scvi/lightning, scipy.stats, pdex, cell-eval, scanpy: see
:func:`modules_for`) loads while the main thread reads and checks the
inputs; the job joins it just before loading the model, where a failed import raises its own error.
"""

from __future__ import annotations

import importlib
import threading

# What loading the model and sampling import: seconds, and needed only once the inputs are read.
HEAVY_MODULES = ("stack.model_loading", "scvi.distributions")


def modules_for(mode: str, *, unpaired: bool, backtest: bool, markers: bool) -> tuple[str, ...]:
    """The slow imports one run's path needs, and only those: arc-stack always; for generate scvi
    (sampling) and scipy.stats (every DE's q-values), pdex for unpaired DE, cell-eval for a
    backtest, scanpy for the identity markers."""
    if mode != "generate":
        return ("stack.model_loading",)
    extra = ("scipy.stats",) + ("pdex",) * unpaired + ("cell_eval",) * backtest + ("scanpy",) * markers
    return HEAVY_MODULES + extra


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
