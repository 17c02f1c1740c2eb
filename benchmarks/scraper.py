"""A Prometheus-like scraper for bench_daemon.py: GET /metrics at a fixed rate.

It runs in a thread of the benchmark's own process (which otherwise only
waits for its client processes), on one keep-alive HTTP connection as
Prometheus keeps one per target. Scrapes are scheduled at start + k * period,
so a slow answer does not slow the schedule down (a missed slot is skipped,
and counted). Every answer must be 200 with a body; anything else is counted
as a failure, which bench_daemon.py reports.
"""

from __future__ import annotations

import http.client
import threading
import time


class Scraper:
    def __init__(self, port: int, period_s: float) -> None:
        self.port = port
        self.period_s = period_s
        self.latencies_s: list[float] = []
        self.failures = 0
        self.missed = 0
        self.body_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        start = time.monotonic()
        slot = 0
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    conn.request("GET", "/metrics")
                    response = conn.getresponse()
                    body = response.read()
                    if response.status != 200 or not body:
                        self.failures += 1
                    self.body_bytes = len(body)
                except (OSError, http.client.HTTPException):
                    self.failures += 1
                    conn.close()  # reconnects on the next request
                self.latencies_s.append(time.monotonic() - began)
                slot += 1
                next_at = start + slot * self.period_s
                now = time.monotonic()
                if next_at < now:  # late: skip the slots that passed
                    skipped = int((now - next_at) / self.period_s) + 1
                    self.missed += skipped
                    slot += skipped
                    next_at = start + slot * self.period_s
                self._stop.wait(next_at - time.monotonic())
        finally:
            conn.close()
