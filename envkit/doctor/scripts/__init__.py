"""Stand-alone framework probes that doctor runs in child interpreters.

A package only so that wheels ship these files; nothing imports it.
"""
