"""How long a test waits for another thread's step before it fails: generous for a loaded machine, never reached
when the code works (a wait, not a timing: the tests assert what happened, not how fast)."""

WAIT = 20  # seconds
