"""`envkit doctor`: verify drivers, GPUs and the deep-learning stack."""
