"""`python -m training ...` = `envkit train ...` (handy under torchrun)."""

from training.cli import main

main()
