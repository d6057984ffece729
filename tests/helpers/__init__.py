"""What the tests use but are not tests: worker processes, a throw-away redis-server, a raw SSE reader, set-up."""
