"""Metrics and process gauges: a leaf package, imported by the app and the API."""
