"""A progress bar that moves with every forward pass of the attacked model, so that a long attack on one batch
(hundreds of iterations, restarts, target classes, Square's queries) shows progress while it runs.

It only counts: a forward hook that updates a bar changes no computation, no random number and no result.
"""
from __future__ import annotations

from types import TracebackType

from torch import nn
from tqdm.auto import tqdm


class PassProgress:
    """``with PassProgress(model, "pgd-20, batch 3", total=21) as bar:`` counts ``model``'s forward passes;
    ``bar.phase("apgd-t")`` names what runs now, ``bar.note(broken=12)`` shows a count beside it. Disabled, it
    registers nothing."""

    def __init__(self, model: nn.Module, desc: str, total: int | None = None, enabled: bool = True) -> None:
        self.model, self.desc, self.total, self.enabled = model, desc, total, enabled
        self._bar: tqdm | None = None
        self._hook = None

    def __enter__(self) -> PassProgress:
        if self.enabled:
            self._bar = tqdm(total=self.total, desc=self.desc, unit="pass", leave=False)
            self._hook = self.model.register_forward_hook(self._count)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._hook is not None:
            self._hook.remove()
        if self._bar is not None:
            self._bar.close()
        self._hook = self._bar = None

    def _count(self, *_: object) -> None:  # a forward hook: returning None leaves the output as it is
        self._bar.update(1)

    def phase(self, name: str, total: int | None = None) -> None:
        """Name what runs now; with ``total`` (its forward passes), the bar counts that part afresh and estimates
        its time left."""
        if self._bar is not None:
            if total is not None:
                self._bar.reset(total=total)
            self._bar.set_description(f"{self.desc}: {name}", refresh=False)

    def note(self, **values: object) -> None:
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)
