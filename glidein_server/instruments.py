"""The server's request instruments: a latency histogram and a byte counter, cheap to update.

The server answers requests on one asyncio event loop, so an observation is a plain list update
(no lock, no label lookup, no ``_created`` series): about a quarter of a microsecond, against two
to three for ``prometheus_client``'s ``Histogram``. A scrape turns them into the library's metric
families (:meth:`Latency.family`, :meth:`ByteCounter.family`), rendered by ``generate_latest``
like every other family, so the exposition is the same as the library's own instruments give.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily


class Latency:
    """A Prometheus histogram of seconds: ``observe`` from the event loop, ``family`` per scrape."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._les = [repr(b) for b in self.bounds] + ["+Inf"]  # 0.0005 -> "0.0005", as the library writes it
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket, as Prometheus's le says.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def family(self) -> HistogramMetricFamily:
        cumulative = []
        running = 0
        for le, n in zip(self._les, self.counts, strict=True):
            running += n
            cumulative.append((le, running))
        return HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.total)


class ByteCounter:
    """A Prometheus counter of bytes by one label whose values the server names (never a user's)."""

    def __init__(self, name: str, documentation: str, label: str, values: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bytes = dict.fromkeys(values, 0)

    def add(self, value: str, n: int) -> None:
        self.bytes[value] += n  # a value not declared is a programming error: KeyError

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, n in self.bytes.items():
            family.add_metric([value], n)
        return family
