"""Metric code behind the YAML tasks in ``tasks/`` (one module per task family).

The tasks' ``utils.py`` files only re-export from here: lm-eval loads a task's
``utils.py`` as a loose file, so anything that must live once per process (a
judge model, a scorer's cache) lives in these importable modules instead.
"""
