"""`selora-serve --merge`: one adapter merged into W0, LoRA off, answers exactly like the same
adapter in a LoRA slot of the store server."""

from __future__ import annotations

import pytest

from .conftest import start_server, stop_server
from .test_server import complete

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def merged_server(tiny_model, checkpoints, tmp_path_factory):
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("merged")
    srv = start_server(
        ["--merge", str(checkpoints["haar"]), "--model", str(tiny_model), "--merge-cache", str(root / "cache")],
        root / "selora-serve.log",
    )
    yield srv
    stop_server(srv)


def test_merged_output_equals_lora_slot_output(merged_server, server):
    client = merged_server.client()
    assert [m.id for m in client.models.list().data] == ["haar"]
    assert complete(client, "haar") == complete(server.client(), "haar")
    with pytest.raises(Exception) as info:
        client.completions.create(model="db4", prompt="x", max_tokens=1)
    assert getattr(info.value, "status_code", None) == 404
