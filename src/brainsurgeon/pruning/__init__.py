"""Pruning engine: criteria score, selectors choose, masks apply, schedules repeat."""
