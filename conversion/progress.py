"""A dependency-free progress bar on stderr, for downloads and large conversions.

tqdm would do, but it is not a dependency of this package; a bar this small is not worth one.
"""

import sys
import time


class Progress:
    """Prints `label [#####.....]  45%  12.3/27.0 MB` on one line, redrawn in place.

    Args:
        label: what is progressing.
        total: the final count (None when unknown: counts are printed without a bar).
        unit: "MB" to show byte counts in megabytes, or a word for plain counts.
        stream: where to print (stderr by default).
        min_interval: seconds between redraws, so a fast loop does not flood the terminal.
    """

    def __init__(self, label, total=None, unit="MB", stream=None, width=30, min_interval=0.1):
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.done = 0
        self._last = 0.0

    def _amount(self, count):
        return f"{count / 1e6:.1f}" if self.unit == "MB" else str(count)

    def update(self, done):
        """Sets the count done so far and redraws (at most every `min_interval` seconds)."""
        self.done = done
        now = time.monotonic()
        if now - self._last < self.min_interval and done != self.total:
            return
        self._last = now
        if self.total:
            fraction = min(done / self.total, 1.0)
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            text = (f"{self.label} [{bar}] {fraction:4.0%} "
                    f"{self._amount(done)}/{self._amount(self.total)} {self.unit}")
        else:
            text = f"{self.label} {self._amount(done)} {self.unit}"
        self.stream.write("\r" + text)
        self.stream.flush()

    def close(self):
        """Draws the final state and ends the line."""
        self._last = 0.0
        self.update(self.done)
        self.stream.write("\n")
        self.stream.flush()
