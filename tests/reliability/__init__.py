"""Reliability tests: the monitors can be left on in any real training run.

A package (unlike the other test folders) so that its module names (``reliability.test_memory``, ...) cannot clash
with test files of the same basename elsewhere in ``tests/``.
"""
