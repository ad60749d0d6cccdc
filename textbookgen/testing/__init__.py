"""Loopback fakes that real clients talk to: an LLM provider emulator and a Hub server."""
