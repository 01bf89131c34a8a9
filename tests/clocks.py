"""Injected time for the tests: they leap through lab days without waiting."""


class Clock:
    """A clock [s] the test sets: ``clock.t = ...``; calling it returns the time."""

    def __init__(self, t):
        self.t = float(t)

    def __call__(self):
        return self.t
