"""`python -m training.cluster sbatch ...` (the same command as `envkit train sbatch`)."""

from training.cluster.cli import app

app(prog_name="python -m training.cluster")
