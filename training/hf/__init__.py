"""Fine-tuning pretrained Hugging Face models (transformers + peft) inside envkit's run contract.

The pieces here are the Hugging Face specifics only: where a model comes from
(`source`), how it is loaded with its own tokenizer (`loading`), LoRA (`lora`),
how the data readers' rows become tokenized batches (`collate`) and the
settings (`settings`). The stage loop, checkpoints, metrics and resume are the
training package's own; this package plugs into them as one more task.
Nothing here is imported unless a run sets `pretrained=`.
"""
