"""`python -m envkit.bench`: the bench commands alone (used where only torch is installed)."""

from envkit.bench.cli import app

app(prog_name="envkit bench")
