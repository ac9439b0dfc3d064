"""Adapters to external programs the operator runs itself (e.g. Envoy for pre-flight)."""
