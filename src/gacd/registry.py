"""One name -> record mechanism for architectures, datasets and methods.

Each registry maps a name to a record (a model's `ArchInfo`, a dataset's `DatasetInfo`, a
method class) and answers an unknown name with the same error, `UnknownName`, which names
the kind, the closest known names and all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from gacd.errors import UnknownName

__all__ = ["Registry", "UnknownName"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Records of one kind by name, in registration order; a name is registered once.

    `kind` is what a name names ("architecture"); `key`, the config key that holds one
    ("model.arch"), prefixes the unknown-name message.
    """

    def __init__(self, kind: str, key: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self._records: dict[str, T] = {}

    def register(self, name: str, record: T) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._records:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._records[name] = record
        return record

    def unregister(self, name: str) -> T:
        """Remove `name` (a plug-in or a test that registered it for a while)."""
        record = self.get(name)
        del self._records[name]
        return record

    def get(self, name: str) -> T:
        """The record of `name`; `UnknownName` if there is none."""
        if isinstance(name, str) and name in self._records:
            return self._records[name]
        raise UnknownName(self.kind, name, self.names(), key=self.key)

    def names(self) -> list[str]:
        return list(self._records)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._records

    def __iter__(self) -> Iterator[T]:
        """The records, in registration order."""
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._records)})"
