"""Prometheus metrics for both programs: core (counters, gauges, histograms and
their text rendering) and listener (the plain-HTTP /metrics and /healthz)."""
