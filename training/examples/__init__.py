"""Small, self-contained examples that show a framework working (run with `python -m`)."""
