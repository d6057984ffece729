"""Fake upstream servers the test-suite talks to over loopback."""
