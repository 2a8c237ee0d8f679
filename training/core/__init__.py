"""Framework-free core: config, data, tokenizer, sampler, metrics, checkpoints."""
