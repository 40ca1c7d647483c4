"""Training SeLoRA / SeDoRA / LoRA adapters (the `selora-train` command).

    layers       AdaptedLinear: frozen nn.Linear + factors (dense, or decoded from coefficients)
    decode       differentiable decoding of coefficients (the serving fast path is not)
    inject       wrap target layers of a model, freeze the rest; extract the trained adapter
    data         JSONL -> token ids with response-only labels (Alpaca template: ../prompts.py)
    trainer      AdamW + cosine warm-up loop, gradient accumulation, resumable
    checkpoints  the trainer's intermediate OUT.train/step-N/ checkpoints
    export       write the result: compact checkpoint (+ PEFT), or PEFT for dense LoRA
    job          one run start to finish; cli: argument parsing and printing only

Training never imports the server; the server shares only `selora_serve.prompts`.
"""
