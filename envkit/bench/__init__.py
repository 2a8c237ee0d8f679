"""`envkit bench`: honest matmul, memory and interconnect throughput."""
