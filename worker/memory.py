"""Device memory as an explicit cache, accounted in fixed-size pages (after Clockwork).

A device has `memory_bytes // page_bytes` pages. A LOAD takes `pages_for(weights_bytes)` pages
and an UNLOAD gives them back; a LOAD that does not fit is refused. Nothing here ever evicts:
only the controller decides what leaves a device, so its picture of memory stays exact.

`PagePool` only counts; it is not thread-safe on its own (the device that owns it holds a lock).
"""

from __future__ import annotations

from dataclasses import dataclass

from clockwork.common.models import pages_for


@dataclass
class PagePool:
    """Page accounting for one device."""

    page_bytes: int
    total_pages: int
    used_pages: int = 0

    @classmethod
    def for_device(cls, memory_bytes: int, page_bytes: int) -> "PagePool":
        if page_bytes <= 0:
            raise ValueError(f"page_bytes must be positive, got {page_bytes}")
        return cls(page_bytes=page_bytes, total_pages=max(0, memory_bytes) // page_bytes)

    @property
    def free_pages(self) -> int:
        return self.total_pages - self.used_pages

    def pages_for(self, weights_bytes: int) -> int:
        return pages_for(weights_bytes, self.page_bytes)

    def fits(self, num_pages: int) -> bool:
        return 0 <= num_pages <= self.free_pages

    def reserve(self, num_pages: int) -> bool:
        """Take `num_pages` if they fit; False (and nothing taken) if they do not."""
        if not self.fits(num_pages):
            return False
        self.used_pages += num_pages
        return True

    def release(self, num_pages: int) -> None:
        if not 0 <= num_pages <= self.used_pages:
            # Our own bookkeeping bug, never a remote's fault: fail loudly.
            raise ValueError(f"release of {num_pages} pages with only {self.used_pages} in use")
        self.used_pages -= num_pages
