"""A hook around the engine's stages, so that a caller (the benchmark) can time them.

The engine calls ``observer.phase(name)`` around resolve, plan, outside (reverse reference
searches), delete, expunge (the hard delete, inside delete) and verify; the default does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Observer(Protocol):
    def phase(self, name: str) -> AbstractContextManager[None]:
        """Entered when the stage ``name`` starts, left when it ends (also by an exception)."""
        ...


class NoObserver:
    """The default: the engine's stages are not observed."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield


NO_OBSERVER: Observer = NoObserver()
