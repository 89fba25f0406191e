"""A small least-recently-used cache (per process) for decoded blocks and samples."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable


class LRUCache:
    """Keep at most ``maxsize`` entries; ``maxsize=0`` disables caching,
    ``None`` means unbounded."""

    def __init__(self, maxsize: int | None):
        if maxsize is not None and int(maxsize) < 0:
            raise ValueError(f"cache size must be >= 0 or None, got {maxsize}")
        self.maxsize = None if maxsize is None else int(maxsize)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable, default: Any = None) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            self.misses += 1
            return default
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.maxsize == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        if self.maxsize is not None:
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def get_or_create(self, key: Hashable, create: Callable[[], Any]) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            value = create()
            self.put(key, value)
        return value

    def clear(self) -> None:
        self._data.clear()


_MISSING = object()
