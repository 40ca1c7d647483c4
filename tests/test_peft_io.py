"""Reading and writing PEFT LoRA directories."""

import json

import pytest


def test_read_peft_refuses_what_selora_cannot_represent(checkpoints, tmp_path):
    from selora_serve.convert import to_peft
    from selora_serve.peft_io import PeftFormatError, read_peft

    peft_dir = to_peft(checkpoints["haar"], tmp_path / "peft")
    dense = read_peft(peft_dir)
    assert dense.r == 8 and dense.alpha == 16 and len(dense.weights) == 10
    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    (peft_dir / "adapter_config.json").write_text(json.dumps(dict(cfg, use_rslora=True)))
    with pytest.raises(PeftFormatError, match="unsupported LoRA feature.*use_rslora=True"):
        read_peft(peft_dir)
