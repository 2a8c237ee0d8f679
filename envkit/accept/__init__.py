"""`envkit accept`: is this node fit to hand to users? One sequence, one verdict.

doctor → GEMM soak with every product checked → memory and peer bandwidth →
all-reduce → DCGM diagnostics → (optionally) a training MFU step. Each step
returns a `Step`; `run_accept` strings them together and draws the verdict.
"""
