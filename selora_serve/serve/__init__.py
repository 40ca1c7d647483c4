"""The `selora-serve` command: vLLM's own OpenAI-compatible server with the SeLoRA plugins.

- `plan`: from our options and the pass-through vLLM options to the exact vLLM argv and
  environment (pure; no server is started).
- `demo`: the tiny local base model and demo adapters behind `selora-serve --demo`.
- `cli`: argument parsing, then `plan` and vLLM's launcher.
"""
