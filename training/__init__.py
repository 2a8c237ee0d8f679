"""The bundled training package: prepare -> pretrain -> fine-tune -> test."""
