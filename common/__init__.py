"""Shared by every process: protocol schema and codec, status codes, clocks, config, logging."""
