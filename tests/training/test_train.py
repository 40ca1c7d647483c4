"""Training end to end on CPU: a tiny model learns a tiny task; runs resume exactly."""


import pytest
import torch

from selora_serve.prompts import alpaca_prompt
from selora_serve.training.checkpoints import list_steps, work_dir_for
from selora_serve.training.data import pad_token_id
from selora_serve.training.inject import inject, trainable_parameters
from selora_serve.training.trainer import TrainConfig, epoch_batches, fit

from .conftest import QA, spec_for


def _greedy(model, tokenizer, record) -> str:
    enc = tokenizer(alpaca_prompt(record["instruction"], record.get("input", "")), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_tiny_model_learns_a_tiny_task(tiny_model, base_model, tokenizer, qa_examples):
    from selora_serve.training.job import load_model

    base_before = {n: p.detach().clone() for n, p in base_model.named_parameters()}
    base_answers = [_greedy(base_model, tokenizer, r) for r in QA]
    assert not any(a == r["output"] for a, r in zip(base_answers, QA))

    inject(base_model, spec_for("haar", dropout=0.0))
    result = fit(
        base_model, qa_examples, TrainConfig(epochs=60, lr=1e-2, batch_size=6, warmup=0.1, seed=0),
        pad_id=pad_token_id(tokenizer), progress=False,
    )
    assert result.steps == 60 and len(result.losses) == 60
    assert result.losses[-1] < 0.35 * result.losses[0], result.losses[::10]
    assert [_greedy(base_model, tokenizer, r) for r in QA] == [r["output"] for r in QA]

    # The frozen weights did not move: the wrapped Linear's weight is the same tensor.
    after = {n.replace(".base.", "."): p for n, p in base_model.named_parameters() if n not in trainable_parameters(base_model)}
    assert set(after) == set(base_before)
    for name, p in after.items():
        assert torch.equal(p, base_before[name]), name
    fresh = load_model(tiny_model)
    assert all(torch.equal(p, after[n]) for n, p in fresh.named_parameters())


def _run(tiny_model, examples, tokenizer, work, *, resume=False, stop_at=None, config=None):
    from selora_serve.training.job import load_model

    model = load_model(tiny_model)
    inject(model, spec_for("sedora", dropout=0.1))

    def stop(log):
        if stop_at is not None and log.step == stop_at:
            raise KeyboardInterrupt

    config = config or TrainConfig(epochs=2, lr=5e-3, batch_size=2, grad_accum=2, save_every=1, seed=3)
    result = fit(model, examples, config, pad_id=pad_token_id(tokenizer), work_dir=work, resume=resume,
                 run_info={"test": 1}, progress=False, on_step=stop)
    return model, result


def test_interrupted_run_resumes_to_the_same_weights(tiny_model, tokenizer, qa_examples, tmp_path):
    """Data order, dropout RNG, AdamW moments and the schedule all continue exactly."""
    model_a, full = _run(tiny_model, qa_examples, tokenizer, None)
    assert full.total_steps == 4  # 6 examples / batch 2 = 3 micro-batches -> 2 steps per epoch

    work = tmp_path / "run.train"
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model, qa_examples, tokenizer, work, stop_at=3)
    assert [p.name for p in list_steps(work)] == ["step-2", "step-3"]  # keep_checkpoints=2
    with pytest.raises(FileExistsError, match="--resume"):
        _run(tiny_model, qa_examples, tokenizer, work)
    model_b, resumed = _run(tiny_model, qa_examples, tokenizer, work, resume=True)
    assert resumed.resumed_from == 3 and resumed.steps == 4 and len(resumed.losses) == 4
    assert resumed.losses == pytest.approx(full.losses, abs=1e-6)
    params_a, params_b = trainable_parameters(model_a), trainable_parameters(model_b)
    for name, p in params_a.items():
        torch.testing.assert_close(params_b[name], p, atol=1e-6, rtol=0)

    changed = TrainConfig(epochs=2, lr=1e-3, batch_size=2, grad_accum=2, save_every=1, seed=3)
    with pytest.raises(ValueError, match=r"cannot resume.*train\.lr"):
        _run(tiny_model, qa_examples, tokenizer, work, resume=True, config=changed)


def test_epoch_order_is_seeded_and_complete():
    a = epoch_batches(10, 4, seed=1, epoch=0)
    assert a == epoch_batches(10, 4, seed=1, epoch=0) != epoch_batches(10, 4, seed=1, epoch=1)
    assert [len(b) for b in a] == [4, 4, 2] and sorted(sum(a, [])) == list(range(10))


def test_train_config_validates():
    for bad in (dict(lr=0), dict(epochs=0), dict(warmup=1.5), dict(batch_size=2.0), dict(max_grad_norm=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)
    assert TrainConfig(warmup=0.1).warmup_steps(50) == 5 and TrainConfig(warmup=100).warmup_steps(50) == 50


def test_work_dir_is_a_sibling(tmp_path):
    assert work_dir_for(tmp_path / "ckpt") == tmp_path / "ckpt.train"


def test_loss_on_labelled_positions_only_equals_the_full_forward(base_model, tokenizer, qa_examples):
    """The trainer sends only labelled positions through the output layer; loss and gradient
    equal the full forward pass's (transformers' own logits over every position)."""
    from selora_serve.training.data import collate
    from selora_serve.training.trainer import _split_head, _token_loss_sum

    inject(base_model, spec_for("haar", dropout=0.0))
    params = list(trainable_parameters(base_model).values())
    with torch.no_grad():  # a non-zero B, so the gradient reaches A too
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    batch = collate(qa_examples, pad_token_id(tokenizer))
    assert _split_head(base_model) is not None
    fast = _token_loss_sum(base_model, batch)
    fast_grads = torch.autograd.grad(fast, params)

    logits = base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    full = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    full_grads = torch.autograd.grad(full, params)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
