"""The adapter store: name -> directory, refusing escapes; validation naming the reason."""

from __future__ import annotations

import shutil

import pytest

from selora_serve.base_model import load_config
from selora_serve.checkpoint import COEF_FILE, CONFIG_FILE
from selora_serve.convert import to_peft
from selora_serve.store import AdapterError, AdapterNameError, AdapterStore, check_name
from selora_serve.store.verify import validate


@pytest.fixture
def roots(checkpoints, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copytree(checkpoints["haar"], a / "shared")
    shutil.copytree(checkpoints["db4"], b / "shared")
    shutil.copytree(checkpoints["fourier"], b / "team" / "fourier")
    to_peft(checkpoints["haar"], a / "dense")
    (a / "empty").mkdir()
    shutil.copytree(checkpoints["haar"], a / ".hidden")
    return a, b


def test_find_first_root_wins_and_kinds(roots):
    a, b = roots
    store = AdapterStore([a, b])
    assert store.find("shared").path == (a / "shared").resolve()
    assert store.find("shared").kind == "selora"
    assert store.find("dense").kind == "peft"
    assert store.find("team/fourier").root == b.resolve()
    assert store.find("empty") is None and store.find("missing") is None
    assert store.names() == ["dense", "shared", "team/fourier"]
    assert {n: f.path for n, f in store.adapters().items()} == {n: store.find(n).path for n in store.names()}
    assert store.max_rank() == 8


@pytest.mark.parametrize("name", ["", "../a", "a/../../x", "/etc", "a//b", "./a", "a\\b", "x\x00y"])
def test_names_that_could_leave_the_store_are_refused(name):
    with pytest.raises(AdapterNameError, match="refused|empty"):
        check_name(name)


def test_symlink_out_of_the_store_is_refused_but_inside_is_fine(roots, checkpoints, tmp_path):
    a, b = roots
    outside = tmp_path / "outside"
    shutil.copytree(checkpoints["db4"], outside)
    (a / "escape").symlink_to(outside, target_is_directory=True)
    (a / "alias").symlink_to(a / "shared", target_is_directory=True)
    store = AdapterStore([a])
    with pytest.raises(AdapterNameError, match="outside the adapter store"):
        store.find("escape")
    assert store.find("alias").path == (a / "shared").resolve()
    assert "escape" not in store.names()


def test_store_from_env(roots):
    a, b = roots
    store = AdapterStore([a, b])
    assert AdapterStore.from_env({"SELORA_ADAPTER_DIRS": store.to_env()}).roots == store.roots
    assert AdapterStore.from_env({}) is None
    with pytest.raises(NotADirectoryError):
        AdapterStore([a / "nope"])


def test_validate_names_adapter_and_reason(checkpoints, tiny_model, tmp_path):
    base = load_config(tiny_model)
    assert validate("ok", checkpoints["haar"], base).config.r == 8
    bad = shutil.copytree(checkpoints["haar"], tmp_path / "bad")
    data = (bad / COEF_FILE).read_bytes()
    (bad / COEF_FILE).write_bytes(data[:100])
    with pytest.raises(AdapterError, match="'bad'.*corrupt or truncated") as info:
        validate("bad", bad, base)
    assert str(tmp_path) not in str(info.value), "messages name files, not host paths"
    (bad / CONFIG_FILE).write_text("[]")
    with pytest.raises(AdapterError, match="expected a JSON object"):
        validate("bad", bad, base)
    with pytest.raises(AdapterError, match="exceeds the server's max LoRA rank 1"):
        validate("ok", checkpoints["haar"], base, max_rank=1)


def test_sedora_is_refused_for_slots_with_the_merge_hint(tiny_model, tmp_path):
    from selora_serve.vllm_ext.loading import peft_config_for

    from ..conftest import make_checkpoint

    ckpt = make_checkpoint(tiny_model, tmp_path / "dora", variant="sedora", basis="wavelet", wavelet="haar")
    with pytest.raises(AdapterError, match=r"'dora'.*cannot fill a LoRA slot.*selora-serve --merge CKPT --model BASE"):
        validate("dora", ckpt, load_config(tiny_model))
    with pytest.raises(ValueError, match=r"dora: SeDoRA \(DoRA\) adapters cannot fill a LoRA slot"):
        peft_config_for(str(ckpt))
