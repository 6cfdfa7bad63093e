"""Thin command-line entry points: parse, call one plain function, map errors to exit codes."""
