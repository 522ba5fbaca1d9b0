"""Test doubles and helpers shared by the test suites (not shipped with any function)."""
