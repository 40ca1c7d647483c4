"""`selora-convert`: command-line conversions of SeLoRA checkpoints (see converters.cli)."""
