"""The tenants file: validation names the file, tenant and field; keys match only by their hash."""

from __future__ import annotations

import subprocess
import sys

import pytest

from selora_serve.tenants import TenantsError, hash_key, load_tenants, parse_tenants

H1, H2, H3 = hash_key("k1"), hash_key("k2"), hash_key("admin-key")


def doc(**tenant):
    return {"admin": {"key_sha256": H3}, "tenant": [{"name": "acme", "key_sha256": H1, "adapters": ["acme-*"], **tenant}]}


def test_authenticates_by_hash_and_matches_names_and_globs():
    t = parse_tenants({**doc(), "tenant": [*doc()["tenant"], {"name": "beta", "key_sha256": H2, "adapters": ["b"],
                                                             "base_model": False}]})
    acme, beta, admin = t.authenticate("k1"), t.authenticate("k2"), t.authenticate("admin-key")
    assert (acme.name, beta.name, admin.is_admin) == ("acme", "beta", True)
    assert t.authenticate("k3") is None and t.authenticate("") is None and t.authenticate(None) is None
    assert t.authenticate(H1) is None, "the stored hash is not itself a key"
    assert acme.may_use("acme-x", ["base"]) and acme.may_use("acme-team/x", ["base"])
    assert not acme.may_use("b", ["base"]) and not acme.may_use("acme", ["base"])
    assert acme.may_use(None, ["base"]) and acme.may_use("base", ["base"])
    assert not beta.may_use(None, ["base"]) and not beta.may_use("base", ["base"]) and beta.may_use("b", ["base"])
    assert admin.may_use("anything", ["base"])


@pytest.mark.parametrize("edit, where, reason", [
    (dict(key="k1"), "tenant 'acme'.key", "plaintext keys are refused"),
    (dict(key_sha256="ABC"), "tenant 'acme'.key_sha256", "64 lowercase hex"),
    (dict(key_sha256=None), "tenant 'acme'.key_sha256", "missing"),
    (dict(adapters="acme-*"), "tenant 'acme'.adapters", "expected a list"),
    (dict(base_model="yes"), "tenant 'acme'.base_model", "true or false"),
    (dict(name="ac me"), "tenant 'ac me'.name", "[A-Za-z0-9_.-]"),
    (dict(name="admin"), "tenant 'admin'.name", "not 'admin'"),
    (dict(colour="red"), "tenant 'acme'.colour", "unknown field"),
])
def test_bad_tenant_fields_are_named(tmp_path, edit, where, reason):
    d = doc(**edit)
    d["tenant"][0] = {k: v for k, v in d["tenant"][0].items() if v is not None}
    with pytest.raises(TenantsError) as err:
        parse_tenants(d, tmp_path / "t.toml")
    assert err.value.where == where and reason in err.value.reason and "t.toml" in str(err.value)


def test_duplicates_and_missing_tenants_are_refused(tmp_path):
    with pytest.raises(TenantsError, match="duplicate tenant name"):
        parse_tenants({"tenant": [doc()["tenant"][0], {**doc()["tenant"][0], "key_sha256": H2}]})
    with pytest.raises(TenantsError, match="same key as 'admin'"):
        parse_tenants({**doc(), "tenant": [{**doc()["tenant"][0], "key_sha256": H3}]})
    with pytest.raises(TenantsError, match="at least one"):
        parse_tenants({"admin": {"key_sha256": H3}})
    with pytest.raises(TenantsError, match="admin.key: plaintext keys are refused"):
        parse_tenants({"admin": {"key": "x"}, "tenant": doc()["tenant"]})


def test_load_reports_the_file(tmp_path):
    path = tmp_path / "tenants.toml"
    with pytest.raises(TenantsError, match="not found"):
        load_tenants(path)
    path.write_text("[[tenant]\nname=")
    with pytest.raises(TenantsError, match="not valid TOML"):
        load_tenants(path)
    path.write_text(f'[admin]\nkey_sha256 = "{H3}"\n[[tenant]]\nname = "acme"\nkey_sha256 = "{H1}"\nadapters = ["a-*"]\n')
    assert load_tenants(path).names == ("acme",)


def test_hash_key_and_new_key_commands():
    run = lambda *a, **kw: subprocess.run([sys.executable, "-m", "selora_serve.tenants", *a], capture_output=True,
                                          text=True, timeout=60, **kw)
    assert run("hash-key", input="k1\n").stdout.strip() == H1
    key, digest = run("new-key").stdout.split()
    assert key.startswith("sk-") and len(key) > 40 and hash_key(key) == digest
