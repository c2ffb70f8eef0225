"""Reliability soak: faults, hostile inputs and bad configs (issue 15), each a test with a count.

`python -m tests.soak.report --write docs/reliability.md` runs all of it and regenerates the table.
"""
