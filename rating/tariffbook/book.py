"""The tariff book in force, replaced whole when the files change (hot reload).

Readers take ``store.book`` once per batch; a reload builds a new book aside and
publishes it with one attribute assignment, so a batch never sees half of one
and a bad edit never replaces a good book. Writers should still replace files by
rename: a file caught half-written may happen to parse.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rating.core.errors import TariffError, TariffIssue
from rating.core.tariff import TariffBook
from rating.tariffbook.files import load_tariffs

Fingerprint = tuple[tuple[str, int, int], ...]
# Given the book in force and a new one that loads, the reasons to refuse the new one.
ReloadGuard = Callable[[TariffBook, TariffBook], list[TariffIssue]]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """``ok``: the files load; ``changed``: a new book is now in force."""

    ok: bool
    issues: list[TariffIssue] = field(default_factory=list)
    changed: bool = False


def fingerprint(root: Path) -> Fingerprint:
    """``(path, mtime_ns, size)`` of every file under ``root``; cheap enough to poll."""
    entries: list[tuple[str, int, int]] = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:  # removed while walking: the next poll sees it
                continue
            entries.append((path, stat.st_mtime_ns, stat.st_size))
    entries.sort()
    return tuple(entries)


def files_digest(root: Path, files: Fingerprint) -> str:
    """``files`` (a fingerprint of ``root``) as a short digest, by paths relative to
    ``root``: two processes that see the same files, however they name the directory,
    get the same digest."""
    digest = hashlib.sha256()
    for path, mtime_ns, size in files:
        name = os.path.relpath(path, root).encode("utf-8", "surrogateescape")
        digest.update(b"%s\0%d\0%d\n" % (name, mtime_ns, size))
    return digest.hexdigest()[:32]


class TariffStore:
    """Holds the current ``TariffBook`` for ``root``; the constructor loads it.

    Raises ``TariffError`` when the initial load fails: the engine must not
    start without prices.
    """

    __slots__ = ("_attempted", "_in_force", "book", "last_issues", "root")

    def __init__(self, root: Path) -> None:
        self.root = root
        self._attempted = fingerprint(root)
        self._in_force = self._attempted  # the files of the book in force
        self.book: TariffBook = load_tariffs(root)
        self.last_issues: list[TariffIssue] = []

    def reload(self, guard: ReloadGuard | None = None) -> ReloadResult:
        """Load the files again; on any issue keep the current book.

        ``guard(current, new)`` may refuse a new book that loads: its issues are
        reported as those of an invalid file (rating/tariffbook/references.py).
        """
        # Taken before reading, so an edit landing mid-load triggers another reload.
        attempted = self._attempted = fingerprint(self.root)
        try:
            book = load_tariffs(self.root)
        except TariffError as exc:
            self.last_issues = exc.issues
            return ReloadResult(ok=False, issues=exc.issues, changed=False)
        refused = guard(self.book, book) if guard is not None else []
        if refused:
            self.last_issues = refused
            return ReloadResult(ok=False, issues=refused, changed=False)
        self.book = book
        self._in_force = attempted
        self.last_issues = []
        return ReloadResult(ok=True, issues=[], changed=True)

    def digests(self) -> tuple[str, str]:
        """``files_digest`` of the files in force, and of those last tried."""
        return (files_digest(self.root, self._in_force),
                files_digest(self.root, self._attempted))

    def changed(self) -> bool:
        """Whether any file changed since the last reload attempt."""
        return fingerprint(self.root) != self._attempted

    def reload_if_changed(self, guard: ReloadGuard | None = None) -> ReloadResult | None:
        """``reload()`` if any file changed since the last attempt, else ``None``."""
        if not self.changed():
            return None
        return self.reload(guard)
