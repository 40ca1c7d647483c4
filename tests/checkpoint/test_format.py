"""The compact checkpoint: round trip, size, and a clear error for every bad input."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from selora_serve.base_model import load_config
from selora_serve.checkpoint import COEF_FILE, CONFIG_FILE, CheckpointError, load_checkpoint, read_manifest, save_checkpoint
from selora_serve.checkpoint.format import bytes_on_disk, dense_lora_bytes


@pytest.fixture
def ckpt(checkpoints, tmp_path) -> Path:
    """A private copy of the haar checkpoint that a test may damage."""
    return Path(shutil.copytree(checkpoints["haar"], tmp_path / "ckpt"))


def _edit_manifest(path: Path, edit) -> None:
    data = json.loads((path / CONFIG_FILE).read_text())
    edit(data)
    (path / CONFIG_FILE).write_text(json.dumps(data))


def test_round_trip_is_exact(checkpoints, tmp_path):
    for name, path in checkpoints.items():
        adapter = load_checkpoint(path)
        again = load_checkpoint(save_checkpoint(adapter, tmp_path / name))
        assert again.config == adapter.config and again.base == adapter.base
        for mod_name, mod in adapter.modules.items():
            assert torch.equal(again.modules[mod_name].coef_a, mod.coef_a)
            assert torch.equal(again.modules[mod_name].coef_b, mod.coef_b)


def test_size_is_one_minus_eta_of_dense_plus_a_few_kb(checkpoints):
    manifest = read_manifest(checkpoints["haar"])
    tensor_bytes = 4 * manifest.num_coefficients()
    dense = dense_lora_bytes(manifest)
    assert abs(tensor_bytes / dense - 0.4) < 0.001  # (1 - eta) of the dense tensors
    assert bytes_on_disk(checkpoints["haar"]) - tensor_bytes < 8 * 1024


def test_bf16_coefficients_halve_the_file(checkpoints, tmp_path):
    adapter = load_checkpoint(checkpoints["haar"])
    path = save_checkpoint(adapter, tmp_path / "bf16", coefficient_dtype="bfloat16")
    loaded = load_checkpoint(path)
    assert next(iter(loaded.modules.values())).coef_a.dtype == torch.bfloat16
    assert read_manifest(path).coefficient_dtype == "bfloat16"


def test_fits_its_base_model(checkpoints, tiny_model):
    load_checkpoint(checkpoints["haar"], base_config=load_config(tiny_model))


def _expect(path: Path, file: str, field: str, reason: str, **kw) -> None:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, **kw)
    assert err.value.path.endswith(file), err.value
    assert err.value.field == field, err.value
    assert reason in err.value.reason, err.value
    assert str(path) in str(err.value)


def test_missing_directory_and_files(ckpt, tmp_path):
    _expect(tmp_path / "nope", "nope", "(directory)", "not found")
    (ckpt / COEF_FILE).unlink()
    _expect(ckpt, COEF_FILE, "(file)", "missing")
    (ckpt / CONFIG_FILE).unlink()
    _expect(ckpt, CONFIG_FILE, "(file)", "not a SeLoRA checkpoint")


def test_truncated_coefficients(ckpt):
    data = (ckpt / COEF_FILE).read_bytes()
    (ckpt / COEF_FILE).write_bytes(data[: len(data) // 2])
    _expect(ckpt, COEF_FILE, "(file)", "corrupt or truncated")


def test_garbage_manifest(ckpt):
    (ckpt / CONFIG_FILE).write_text("{not json")
    _expect(ckpt, CONFIG_FILE, "(file)", "not valid JSON")


def test_unknown_version(ckpt):
    _edit_manifest(ckpt, lambda d: d.update(format_version=4))
    _expect(ckpt, CONFIG_FILE, "format_version", "unsupported version 4: this build of selora-serve reads versions 1, 2, 3")


def test_version_1_fourier_reads_as_fourier_real_with_the_same_numbers(checkpoints, tmp_path):
    """Format v1's "fourier" (Re(ifft2)) is v2's "fourier-real": old checkpoints decode as before."""
    from selora_serve.adapter import materialise_adapter
    from selora_serve.checkpoint import FORMAT_VERSION

    v2 = load_checkpoint(checkpoints["fourier"])
    legacy = type(v2)(type(v2.config)(**{**v2.config.to_dict(), "basis": "fourier-real"}), v2.base, v2.modules)
    path = save_checkpoint(legacy, tmp_path / "v1")
    assert read_manifest(path).config.basis == "fourier-real" and FORMAT_VERSION == 2
    _edit_manifest(path, lambda d: (d.update(format_version=1), d["config"].update(basis="fourier")))
    old = load_checkpoint(path)
    assert old.config.basis == "fourier-real"
    name = next(iter(old.modules))
    a, _ = materialise_adapter(old)[name]
    mod = old.modules[name]
    spectrum = torch.zeros(old.config.r * mod.in_features, dtype=torch.float64)
    spectrum[torch.from_numpy(old.layout_a(mod).positions.copy())] = mod.coef_a.double()
    want = torch.fft.ifft2(spectrum.view(old.config.r, mod.in_features)).real
    torch.testing.assert_close(a.double(), want, atol=1e-6, rtol=1e-5)
    # ... and v2 decodes the same coefficients differently (the Hartley basis).
    assert not torch.allclose(materialise_adapter(v2)[name][0], a)
    _edit_manifest(path, lambda d: d["config"].update(basis="fourier-real"))
    _expect(path, CONFIG_FILE, "config.basis", "'fourier-real' is a version 2 name; version 1 calls it 'fourier'")


def test_unknown_basis(ckpt):
    _edit_manifest(ckpt, lambda d: d["config"].update(basis="dct"))
    _expect(ckpt, CONFIG_FILE, "config", "unknown basis 'dct'")


def test_unknown_and_missing_config_fields(ckpt):
    _edit_manifest(ckpt, lambda d: d["config"].update(rank=3))
    _expect(ckpt, CONFIG_FILE, "config", "unknown field(s) rank")
    _edit_manifest(ckpt, lambda d: (d["config"].pop("rank"), d["config"].pop("eta")))
    _expect(ckpt, CONFIG_FILE, "config", "missing field(s) eta")


def test_coefficient_count_different_from_k(ckpt):
    tensors = load_file(str(ckpt / COEF_FILE))
    key = next(k for k in tensors if k.endswith("coef_a"))
    tensors[key] = tensors[key][:-1].clone()
    save_file(tensors, str(ckpt / COEF_FILE))
    _expect(ckpt, COEF_FILE, key, "expected k =")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_coefficients(ckpt, bad):
    tensors = load_file(str(ckpt / COEF_FILE))
    key = next(k for k in tensors if k.endswith("coef_b"))
    tensors[key][3] = bad
    save_file(tensors, str(ckpt / COEF_FILE))
    _expect(ckpt, COEF_FILE, key, "NaN/Inf")


def _data_order(file) -> list[str]:
    """Tensor names in the order of their bytes in a safetensors file."""
    data = file.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("where", [0, -1])
def test_non_finite_value_found_at_either_end_of_the_file_in_any_dtype(checkpoints, tmp_path, dtype, where):
    """The fast check sums the file's whole data region in place: its first and last values count."""
    path = save_checkpoint(load_checkpoint(checkpoints["haar"]), tmp_path / dtype, coefficient_dtype=dtype)
    tensors = load_file(str(path / COEF_FILE))
    key = _data_order(path / COEF_FILE)[where]
    tensors[key][where] = float("nan")
    save_file(tensors, str(path / COEF_FILE))
    _expect(path, COEF_FILE, key, "1 NaN/Inf value(s)")


def test_huge_finite_coefficients_are_accepted(ckpt):
    """The NaN/Inf check sums everything first; a sum that overflows is not an error."""
    tensors = load_file(str(ckpt / COEF_FILE))
    key = next(k for k in tensors if k.endswith("coef_b"))
    tensors[key][:4] = 3e38
    save_file(tensors, str(ckpt / COEF_FILE))
    assert load_checkpoint(ckpt).modules[key.removesuffix(".coef_b")].coef_b[0] == 3e38


def test_verify_false_still_checks_structure(ckpt):
    """verify=False (a server's verified snapshot) skips value checks, not the structure."""
    tensors = load_file(str(ckpt / COEF_FILE))
    key = next(k for k in tensors if k.endswith("coef_b"))
    tensors[key][3] = float("nan")
    save_file(tensors, str(ckpt / COEF_FILE))
    assert load_checkpoint(ckpt, verify=False).modules[key.removesuffix(".coef_b")].coef_b[3].isnan()
    tensors[key] = tensors[key][:-1].clone()
    save_file(tensors, str(ckpt / COEF_FILE))
    with pytest.raises(CheckpointError, match="expected k ="):
        load_checkpoint(ckpt, verify=False)


def test_missing_and_extra_tensors(ckpt):
    tensors = load_file(str(ckpt / COEF_FILE))
    extra = dict(tensors, **{"junk": torch.zeros(1)})
    save_file(extra, str(ckpt / COEF_FILE))
    _expect(ckpt, COEF_FILE, "junk", "unexpected tensor")
    key = sorted(tensors)[0]
    del tensors[key]
    save_file(tensors, str(ckpt / COEF_FILE))
    _expect(ckpt, COEF_FILE, key, "tensor missing")


def test_huge_declared_shapes_are_refused_before_allocating(ckpt):
    name = next(iter(json.loads((ckpt / CONFIG_FILE).read_text())["modules"]))
    _edit_manifest(ckpt, lambda d: d["modules"][name].update(in_features=10**12))
    _expect(ckpt, CONFIG_FILE, f"modules.{name}", "features must be integers in [1, 1048576]")


def test_altered_seed_fails_the_omega_checksum(ckpt):
    # A different seed with the same shapes: counts still match, positions do not.
    def edit(d):
        d["config"]["seed"] += 1
    _edit_manifest(ckpt, edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    assert err.value.field.startswith("omega.") and err.value.field.endswith(".sha256")
    assert "do not match the checksum" in err.value.reason


def test_shapes_that_do_not_fit_the_base_model(ckpt, tiny_model, tmp_path):
    from selora_serve.tiny import TinySpec, build_tiny_model

    other = build_tiny_model(tmp_path / "other", spec=TinySpec(hidden_size=64, num_attention_heads=2, num_key_value_heads=1))
    _expect(ckpt, CONFIG_FILE, "base_model.fingerprint", "different base architecture", base_config=load_config(other))
    # same fingerprint but a module the base does not have
    name = next(iter(json.loads((ckpt / CONFIG_FILE).read_text())["modules"]))
    _edit_manifest(ckpt, lambda d: d["modules"].__setitem__(name.replace("layers.0", "layers.7"), d["modules"].pop(name)))
    with pytest.raises(CheckpointError, match="no such module in the base model"):
        load_checkpoint(ckpt, base_config=load_config(tiny_model))


def test_existing_output_is_not_overwritten_without_consent(checkpoints, tmp_path):
    adapter = load_checkpoint(checkpoints["haar"])
    out = save_checkpoint(adapter, tmp_path / "x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_checkpoint(adapter, out)
    save_checkpoint(load_checkpoint(checkpoints["fourier"]), out, overwrite=True)
    assert read_manifest(out).config.basis == "fourier"


def test_killed_write_leaves_no_partial_checkpoint(checkpoints, tmp_path):
    """SIGKILL the writer in the middle of writing the coefficients: OUT must not exist."""
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, safetensors.torch as st
        from selora_serve.checkpoint import load_checkpoint, save_checkpoint
        real = st.save_file
        def dying(tensors, filename, metadata=None):
            with open(filename, "wb") as fh:
                fh.write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        st.save_file = dying
        save_checkpoint(load_checkpoint({str(checkpoints['haar'])!r}), {str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert proc.returncode == -9
    assert not out.exists()
    leftovers = list(tmp_path.glob(".killed.tmp-*"))
    assert leftovers, "the test should have caught the writer mid-write"
    # the next write cleans up after the killed one and succeeds
    save_checkpoint(load_checkpoint(checkpoints["haar"]), out)
    assert not list(tmp_path.glob(".killed.tmp-*"))
    load_checkpoint(out)



def test_header_only_check_is_never_laxer_than_safetensors(checkpoints):
    """`safetensors_layout` (the API process's copy-free check) accepts a file only if
    safetensors itself loads it: the engine's worker must never meet a file the check passed
    and safetensors refuses. Hundreds of damaged variants of a real coefficient file."""
    import json as _json
    import random

    from safetensors.torch import load

    from selora_serve.checkpoint import COEF_FILE
    from selora_serve.checkpoint.safetensors_bytes import safetensors_layout

    data = (checkpoints["haar"] / COEF_FILE).read_bytes()
    want = {k: (v.dtype, tuple(v.shape)) for k, v in load(data).items()}
    got = safetensors_layout(data)
    assert {k: (getattr(torch, {"F32": "float32"}[d]), s) for k, (d, s) in got.items()} == want
    n = int.from_bytes(data[:8], "little")
    header = _json.loads(data[8:8 + n])
    rng = random.Random(0)

    def with_header(h: dict) -> bytes:
        raw = _json.dumps(h).encode()
        return len(raw).to_bytes(8, "little") + raw + data[8 + n:]

    variants = [data[:k] for k in (0, 7, 8, 20, 8 + n - 1, 8 + n, len(data) - 4, len(data) - 1)]
    variants += [data + b"\0" * 4, (n + 4).to_bytes(8, "little") + data[8:], (10**9).to_bytes(8, "little") + data[8:]]
    for _ in range(150):  # flipped bytes in the header
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(0, 8 + n)] ^= 1 << rng.randrange(8)
        variants.append(bytes(b))
    names = [k for k in header if k != "__metadata__"]
    for _ in range(100):  # plausible but wrong headers
        h = _json.loads(_json.dumps(header))
        name, what = rng.choice(names), rng.randrange(6)
        if what == 0:
            h[name]["data_offsets"][rng.randrange(2)] += rng.choice((-4, 4))
        elif what == 1:
            h[name]["shape"] = [h[name]["shape"][0] + rng.choice((-1, 1))]
        elif what == 2:
            h[name]["dtype"] = rng.choice(("F16", "BF16", "I32", "F64", "X9"))
        elif what == 3:
            del h[name]
        elif what == 4:
            h[name]["extra"] = 1
        else:
            other = rng.choice(names)
            h[name]["data_offsets"], h[other]["data_offsets"] = h[other]["data_offsets"], h[name]["data_offsets"]
        variants.append(with_header(h))
    accepted = 0
    for v in variants:
        try:
            safetensors_layout(v)
        except ValueError:
            continue
        accepted += 1
        load(v)  # must not raise
    assert accepted >= 2, "some variants (e.g. swapped offsets of equal-sized tensors) are valid files"
