"""The least-recently-used memo a service keeps in memory: networks, dataset tensors, analysis results."""

import threading
from collections import OrderedDict


class LRU:
    """At most `size` values, the least recently used dropped first; safe across threads."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        """The value kept under `key`, marked used; None when there is none."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def pop(self, key) -> None:
        with self._lock:
            self._items.pop(key, None)
