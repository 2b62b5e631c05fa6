"""Which stored items a search may return: below a folder, made in a date range, of one modality.

This module imports nothing heavy: `retrv search --server` builds its filter here without numpy or LanceDB.

A `SearchFilter` becomes one SQL predicate over the items table (`where`), which LanceDB evaluates on its
scalar columns before any vector is read; the ANN then searches only the keys that pass (`Index.coarse`).

Dates are the `date` column: a photo's EXIF capture time (DateTimeOriginal, else DateTime) when its file has
one, else the file's modification time, stored at index time. A date without a time zone (EXIF's, or one
typed on the command line) is local time. `until` is inclusive of the period it names: `until="2024-05"`
keeps all of May.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from retrv.errors import UsageError
from retrv.items import MODALITIES

if TYPE_CHECKING:
    from retrv.items import Item

DateLike = float | int | str | datetime
DATE_FORMS = "a date like 2024-05-01, 2024-05, 2024, 2024-05-01T14:30 (optionally +02:00 or Z), 30d / 6w, or @SECONDS"
_RELATIVE = re.compile(r"^(\d+)\s*([dw])$")
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?$")
_SECONDS = re.compile(r"^@-?\d+(\.\d*)?$")  # GNU date's @SECONDS: seconds since the epoch


@dataclass(frozen=True)
class SearchFilter:
    """`under`: folders (or files) whose items pass; `since`/`until`: bounds on the item's date, inclusive;
    `modality`: "image", "text" or "image,text", as stored. Unset parts pass everything."""

    under: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    modality: str | None = None

    @classmethod
    def make(
        cls,
        *,
        under: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        since: DateLike | None = None,
        until: DateLike | None = None,
        modality: str | None = None,
    ) -> SearchFilter | None:
        """A filter from what a person gives (paths, date strings); None when nothing is asked for.
        UsageError, naming the option, for a date that does not parse or an unknown modality."""
        paths = [under] if isinstance(under, str | os.PathLike) else list(under or [])
        roots = tuple(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(p)))) for p in paths)
        if modality is not None and modality not in MODALITIES:
            raise UsageError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        low = None if since is None else parse_date(since, option="--since")
        high = None if until is None else parse_date(until, option="--until", end=True)
        if low is not None and high is not None and low > high:
            raise UsageError(f"--since ({since}) is after --until ({until}); no item can be in that range")
        made = cls(roots, low, high, modality)
        return made if made.active else None

    def to_dict(self) -> dict[str, Any]:
        return {"under": list(self.under), "since": self.since, "until": self.until, "modality": self.modality}

    @property
    def active(self) -> bool:
        return bool(self.under) or self.since is not None or self.until is not None or self.modality is not None

    def where(self, *, date_column: str = "date") -> str:
        """The SQL predicate LanceDB evaluates (`date_column` is "mtime" for an index from before dates)."""
        parts = []
        if self.under:
            parts.append(" OR ".join(under_sql(root) for root in self.under))
        if self.since is not None:
            parts.append(f"{date_column} >= {self.since!r}")
        if self.until is not None:
            parts.append(f"{date_column} <= {self.until!r}")
        if self.modality is not None:
            parts.append(f"modality = {sql_quote(self.modality)}")
        return " AND ".join(f"({p})" for p in parts) or "true"

    def accepts(self, item: Item) -> bool:
        """The same test in Python, for one item."""
        from retrv.scan import is_under

        if self.under and not any(is_under(item.source, root) for root in self.under):
            return False
        if self.since is not None and item.date < self.since:
            return False
        if self.until is not None and item.date > self.until:
            return False
        return self.modality is None or item.modality == self.modality

    def describe(self) -> str:
        parts = [f"under {', '.join(self.under)}"] if self.under else []
        if self.since is not None:
            parts.append(f"since {_show(self.since)}")
        if self.until is not None:
            parts.append(f"until {_show(self.until)}")
        if self.modality is not None:
            parts.append(f"modality {self.modality}")
        return ", ".join(parts)


def parse_date(value: DateLike, *, option: str = "date", end: bool = False, now: float | None = None) -> float:
    """Seconds since the epoch for `value` (DATE_FORMS, a datetime, or a number of seconds). With `end`, a
    date that names a period (a year, a month, a day) stands for its last moment."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    text = str(value).strip()
    if m := _RELATIVE.match(text):
        days = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
        return (time.time() if now is None else now) - days * 86400.0
    if m := _PARTIAL.match(text):
        year, month = int(m.group(1)), int(m.group(2) or 0)
        if month > 12:
            raise UsageError(f"{option}: expected {DATE_FORMS}, got {text!r}")
        start = datetime(year, month or 1, 1)
        if not end:
            return start.timestamp()
        after = datetime(year + 1, 1, 1) if not month else datetime(year + month // 12, month % 12 + 1, 1)
        return after.timestamp() - 1e-6
    if _SECONDS.match(text):  # what `search --server` sends
        return float(text[1:])
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise UsageError(f"{option}: expected {DATE_FORMS}, got {text!r}") from None
    if end and len(text) == 10:  # a whole day
        return (when + timedelta(days=1)).timestamp() - 1e-6
    return when.timestamp()


def sql_quote(value: str) -> str:
    """`value` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def under_sql(root: str) -> str:
    """The predicate for the items at or below the absolute path `root`."""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return f"source = {sql_quote(root)} OR starts_with(source, {sql_quote(prefix)})"


def _show(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).isoformat(timespec="seconds")
