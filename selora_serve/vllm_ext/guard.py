"""The `selora_guard` endpoint plugin: an ASGI middleware in vLLM's API server that checks every
request before vLLM parses it, resolves an adapter or loads anything.

Always:
- a request body larger than SELORA_MAX_BODY_BYTES (default 1 MiB) answers 413, from its
  Content-Length when it has one, else as soon as the bytes read pass the limit;
- a JSON body (Content-Type application/json) that is not a JSON object answers 400, as does
  one with a duplicated top-level key (parsers disagree on which copy wins).
Both bodies are OpenAI-style: {"error": {"message", "type", "param", "code"}}.

With SELORA_TENANTS (a tenants file, see `selora_serve.tenants`; `selora-serve --tenants`):
- paths are open (/health, /ready, /readyz, /ping, /load, /version, /metrics), tenant paths
  (vLLM's --api-key prefixes /v1 /v2 /inference /cohere, and /tokenize, /detokenize, /classify,
  /score, /rerank, /pooling, /invocations) or admin paths (/v1/selora/*, /v1/load_lora_adapter,
  /v1/unload_lora_adapter, and every other path: unknown routes are the admin's by default);
- outside the open paths `Authorization: Bearer KEY` must name a tenant or the admin (else 401);
  a tenant's key on an admin path answers 403;
- a tenant's request whose `model` it may not use answers 404 with the very body vLLM gives for
  a model that does not exist, so another tenant's adapter is indistinguishable from no adapter;
  a request without `model` means the base model; a non-JSON body from a tenant answers 415
  (a form body could name a model this guard cannot read);
- GET /v1/models lists only what the caller may use;
- stored responses (vLLM's Responses API store, on with VLLM_ENABLE_RESPONSES_API_STORE=1) are
  each tenant's own: reading, cancelling or continuing another principal's answers as for an id
  that does not exist, and a tenant cannot take another's `request_id` (see `owners`);
- every authenticated request is counted in `selora_tenant_requests_total{tenant, status}`
  (the admin as "admin", a refused key as "unauthenticated").
vLLM's own --api-key check is not used with tenants (`selora-serve` refuses both together).

The middleware is added from `attach_router`, which vLLM 0.32's `build_app` calls before it adds
its own middleware (CORS, --api-key): ours is the innermost, after CORS answered preflights.
"""

from __future__ import annotations

import json
import os

from . import metrics
from .owners import CREATE_PATH, ResponseOwners, stored_response_id

PLUGIN_NAME = "selora_guard"
ENV_TENANTS = "SELORA_TENANTS"
ENV_MAX_BODY = "SELORA_MAX_BODY_BYTES"
DEFAULT_MAX_BODY = 1 << 20

OPEN_PATHS = ("/health", "/ready", "/readyz", "/ping", "/load", "/version", "/metrics")
TENANT_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")  # vLLM's --api-key GUARDED_PREFIX
TENANT_PATHS = ("/tokenize", "/detokenize", "/classify", "/score", "/rerank", "/pooling", "/invocations")
ADMIN_PREFIXES = ("/v1/selora/", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")
BODY_METHODS = ("POST", "PUT", "PATCH")


def path_class(path: str) -> str:
    """"open", "tenant" or "admin" for a request path (root_path removed)."""
    if path in OPEN_PATHS:
        return "open"
    if path.startswith(ADMIN_PREFIXES) or path == "/v1/selora":
        return "admin"
    if path in TENANT_PATHS or any(path == p or path.startswith(p + "/") for p in TENANT_PREFIXES):
        return "tenant"
    return "admin"


def _error(status: int, message: str, err_type: str, param: str | None = None) -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _bearer(scope) -> str | None:
    scheme, _, key = (_header(scope, b"authorization") or "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def unknown_model_body(app, model: str) -> dict:
    """vLLM's answer for a model it does not serve (`BaseServing._check_model`), built the same way."""
    from http import HTTPStatus

    from vllm.entrypoints.serve import create_error_response

    served = ", ".join(m.name for m in app.state.openai_serving_models.base_model_paths)
    err = create_error_response(
        message=f"The model `{model}` does not exist. Valid aliases: {served}.",
        err_type="NotFoundError", status_code=HTTPStatus.NOT_FOUND, param="model",
    )
    return err.model_dump()


def unknown_response_body(response_id: str) -> dict:
    """vLLM's answer for a stored response id it does not know (`_make_not_found_error`)."""
    from http import HTTPStatus

    from vllm.entrypoints.serve import create_error_response

    err = create_error_response(
        message=f"Response with id '{response_id}' not found.", err_type="invalid_request_error",
        status_code=HTTPStatus.NOT_FOUND, param="response_id",
    )
    return err.model_dump()


class Guard:
    """Pure ASGI middleware; see the module docstring for what it answers and when."""

    def __init__(self, app, tenants=None, max_body: int = DEFAULT_MAX_BODY, response_store: bool = False):
        self.app = app
        self.tenants = tenants
        self.max_body = max_body
        # Only when vLLM stores responses: otherwise there is nothing to protect, and recording
        # every response id would grow without bound.
        self.owners = ResponseOwners() if response_store else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", "") or "")
        method = scope["method"]
        principal = None
        if self.tenants is not None and method != "OPTIONS" and path_class(path) != "open":
            principal = self.tenants.authenticate(_bearer(scope))
            if principal is None:
                metrics.count_tenant_request("unauthenticated", 401)
                return await _respond(send, *_error(401, "missing or unknown API key (Authorization: Bearer KEY)",
                                                    "AuthenticationError"))
            send = _counting(send, principal.name)
            if path_class(path) == "admin" and not principal.is_admin:
                return await _respond(send, *_error(403, "this route needs the admin key", "PermissionDeniedError"))
            stored = stored_response_id(method, path) if self.owners is not None else None
            if stored is not None and not principal.is_admin and not self.owners.owns(principal.name, stored):
                return await _respond(send, 404, unknown_response_body(stored))

        if method in BODY_METHODS:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return  # answered (413) or the client went away
            content_type = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
            if content_type == "application/json" and body:
                try:
                    doc = json.loads(body, object_pairs_hook=_no_duplicates)
                except _DuplicateKey as exc:
                    return await _respond(send, *_error(400, f"duplicated key {exc} in the JSON body", "BadRequestError"))
                except (ValueError, RecursionError) as exc:
                    return await _respond(send, *_error(400, f"request body is not valid JSON: {exc}", "BadRequestError"))
                if not isinstance(doc, dict):
                    return await _respond(send, *_error(400, "request body must be a JSON object", "BadRequestError"))
                if principal is not None and not principal.is_admin:
                    model = doc.get("model")
                    if model is not None and not isinstance(model, str):
                        return await _respond(send, *_error(400, "`model` must be a string", "BadRequestError", "model"))
                    if not self.allowed(principal, model, scope):
                        return await _respond(send, 404, self.unknown_model_body(scope, model))
                if principal is not None and self.owners is not None and method == "POST" and path == CREATE_PATH:
                    refusal = self._response_refusal(principal, doc)
                    if refusal is not None:
                        return await _respond(send, *refusal)
                    send = self.owners.recording(send, principal.name)
            elif body and principal is not None and not principal.is_admin:
                return await _respond(send, *_error(415, "with tenants, request bodies must be application/json",
                                                    "UnsupportedMediaType"))
            receive = _replay(body, receive)

        if principal is not None and not principal.is_admin and method == "GET" and path == "/v1/models":
            send = _filtering_models(send, lambda m: self.allowed(principal, m, scope))
        return await self.app(scope, receive, send)

    def _response_refusal(self, principal, doc: dict) -> tuple[int, dict] | None:
        """Why this principal may not create this response (see `owners`), or None."""
        if principal.is_admin:
            return None
        previous, chosen = doc.get("previous_response_id"), doc.get("request_id")
        if isinstance(previous, str) and not self.owners.owns(principal.name, previous):
            return 404, unknown_response_body(previous)
        if isinstance(chosen, str) and not self.owners.claim(principal.name, chosen):
            return _error(409, f"request_id {chosen!r} is already in use", "ConflictError", "request_id")
        return None

    # The two questions a front end answers its own way (Ray's ingress overrides them).
    def allowed(self, principal, model: str | None, scope) -> bool:
        """May `principal` use `model` (None: the base model)? vLLM's app knows its base names."""
        return principal.may_use(model, [m.name for m in scope["app"].state.openai_serving_models.base_model_paths])

    def unknown_model_body(self, scope, model: str | None) -> dict:
        """The body this front end answers for a model that does not exist."""
        return unknown_model_body(scope["app"], model)

    async def _read_body(self, scope, receive, send) -> bytes | None:
        declared = _header(scope, b"content-length")
        too_large = _error(413, f"request body larger than {self.max_body} bytes", "RequestTooLargeError")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _respond(send, *too_large)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _respond(send, *too_large)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that gives the already-read body once, then the client's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


def _counting(send, tenant: str):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            metrics.count_tenant_request(tenant, message["status"])
        await send(message)

    return wrapped


def _filtering_models(send, allowed):
    """A send() that drops from a /v1/models listing every model `allowed(id)` refuses, and
    replaces the host paths vLLM reports as `root` by the model's id."""
    start: dict = {}
    chunks: list[bytes] = []

    async def wrapped(message):
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if start.get("status") == 200:
            listing = json.loads(body)
            listing["data"] = [m for m in listing.get("data", []) if allowed(m.get("id"))]
            for model in listing["data"]:
                # vLLM puts the weights' host path in `root`; a tenant learns nothing from it.
                model["root"] = model.get("id")
            body = json.dumps(listing, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return wrapped


async def _respond(send, status: int, content: dict) -> None:
    """Answer as vLLM's routes do (Starlette's JSONResponse), so our bodies and headers are byte-identical."""
    from starlette.responses import JSONResponse

    response = JSONResponse(content, status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


class GuardPlugin:
    """Adds `Guard` to vLLM's app; configured from SELORA_TENANTS and SELORA_MAX_BODY_BYTES."""

    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def __init__(self):
        from ..tenants import load_tenants

        path = os.environ.get(ENV_TENANTS)
        self.tenants = load_tenants(path) if path else None
        self.max_body = int(os.environ.get(ENV_MAX_BODY) or DEFAULT_MAX_BODY)

    def attach_router(self, app) -> None:
        import vllm.envs as envs

        app.add_middleware(Guard, tenants=self.tenants, max_body=self.max_body,
                           response_store=bool(envs.VLLM_ENABLE_RESPONSES_API_STORE))

    async def init_state(self, engine_client, state, args) -> None:
        if self.tenants is not None and getattr(args, "api_key", None):
            raise RuntimeError("--tenants replaces --api-key; pass only one of them")
