"""The train step: the two-phase loop (train.py), its resume state (checkpoint.py) and CLI (cli.py)."""
