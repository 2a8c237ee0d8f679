"""`envkit images`: build and test the matrix's container images."""
