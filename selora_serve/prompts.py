"""The prompt template adapters are trained with and served with: the one place it lives.

SeLoRA's paper trains on alpaca-style data with the Stanford Alpaca template (the same text the
LLM-Adapters commonsense/math benchmarks use). An adapter only answers well when it is prompted
exactly as it was trained, so training (`selora_serve.training.data`) and serving both call
`alpaca_prompt` and nothing else. The response follows the prompt directly, with no separator:
the prompt already ends in a newline after "### Response:".

    alpaca_prompt("Name a colour.")         -> ALPACA_NO_INPUT.format(instruction=...)
    alpaca_prompt("Translate.", "red cat")  -> ALPACA_WITH_INPUT.format(instruction=..., input=...)
"""

from __future__ import annotations

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The prompt for one example; an empty (or whitespace-only) input selects the short form."""
    if input.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)
