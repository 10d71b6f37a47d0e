"""The reliability and security suite: faults, crashes, contention, bad input, secrets.

See the README's Reliability section (written by make_table.py) for the promise each test keeps.
"""
