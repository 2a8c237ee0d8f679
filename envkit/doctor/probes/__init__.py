"""Doctor probes: each returns checks (status, evidence, hint) and never raises."""
