"""Training across the nodes of a Slurm allocation: the batch script and each node's environment.

`sbatch.render` writes the job script (`envkit train sbatch`): one `srun` task
per node; on each node `slurmenv` derives the rendezvous head, `is_host` and
`TF_CONFIG` from the `SLURM_*` variables, then the node starts `torchrun`
(PyTorch) or one TensorFlow worker.
"""
