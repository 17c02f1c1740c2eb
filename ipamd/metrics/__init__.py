"""Metrics: the hot path's counters, the Prometheus collector, the text and its HTTP endpoint."""
