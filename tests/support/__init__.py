"""Helpers the tests and benchmarks share, in modules named for what they hold: test modules
import from here, never from one another, and conftest.py files keep to fixtures (and the
repository paths they use)."""
