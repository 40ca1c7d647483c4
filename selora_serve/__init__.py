"""selora-serve: train, ship and serve SeLoRA (spectral-encoding LoRA) adapters.

Layers, from the bottom: `spectral` (pure math), `config`/`adapter` (in-memory adapters),
`checkpoint` (the on-disk format), `peft_io` and `merge` (interchange with PEFT and HF
models); serving integrations live in their own packages and are imported lazily.
"""

__version__ = "0.1.0"
