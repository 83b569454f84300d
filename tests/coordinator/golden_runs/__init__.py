"""Golden run histories: real runs of the fold, recorded as event logs (see history.py)."""
