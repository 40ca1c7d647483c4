"""Who owns each stored response of vLLM's Responses API, so that tenants see only their own.

With VLLM_ENABLE_RESPONSES_API_STORE=1, vLLM 0.32 keeps every /v1/responses result in one
in-memory store keyed by its id, and serves it to anyone who names the id:
`GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`, and `previous_response_id` in a new
request (which puts the stored conversation into the new prompt). The id is the request's
`request_id`, which a client may choose, so a client can also overwrite a stored response.

`ResponseOwners` is the guard's record (`guard.Guard`): the id of every response created through
it, with the principal (tenant or admin) that created it, and the rules the guard applies to a
tenant (the admin is never restricted):

- reading or cancelling a response it does not own answers exactly as vLLM answers for an id that
  does not exist (404), as does continuing one (`previous_response_id`);
- choosing a `request_id` that another principal owns answers 409; a chosen id is reserved for
  its tenant before the request reaches vLLM, so two concurrent requests cannot both take it;
- the id of each created response is read from vLLM's reply (the JSON body, or the first
  server-sent event of a stream, `response.created`) and recorded for its principal.

The guard keeps this record only while vLLM's store is on; it lives as long as the process, like
vLLM's store (which never forgets either), and an id it does not know is never a tenant's. Pure
Python: no vLLM import.
"""

from __future__ import annotations

import re

CREATE_PATH = "/v1/responses"
# vLLM's routes that name a stored response: GET /v1/responses/{id}, POST /v1/responses/{id}/cancel.
_STORED = {"GET": re.compile(r"^/v1/responses/([^/]+)$"), "POST": re.compile(r"^/v1/responses/([^/]+)/cancel$")}
# The first "id" key of a reply is the response's own: in the JSON body it is the object's first
# field, in a stream the first event (response.created) carries the response object. Quotes inside
# generated text are escaped (\"), so text cannot forge this pattern.
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]+)"')
_SCAN_LIMIT = 1 << 16  # the id comes in the first bytes; past this, stop looking


def stored_response_id(method: str, path: str) -> str | None:
    """The response id a request path names (read or cancel), else None."""
    pattern = _STORED.get(method)
    match = pattern.match(path) if pattern else None
    return match.group(1) if match else None


class ResponseOwners:
    """response id -> owning principal's name (see the module docstring)."""

    def __init__(self):
        self._owner: dict[str, str] = {}

    def owns(self, principal: str, response_id: str) -> bool:
        return self._owner.get(response_id) == principal

    def claim(self, principal: str, response_id: str) -> bool:
        """Reserve a client-chosen id for `principal`; False if another principal holds it."""
        return self._owner.setdefault(response_id, principal) == principal

    def recording(self, send, principal: str):
        """A send() that records the id of the response in vLLM's reply as `principal`'s."""
        state = {"status": None, "seen": b"", "done": False}

        async def wrapped(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["done"] = message["status"] != 200
            elif message["type"] == "http.response.body" and not state["done"]:
                state["seen"] += message.get("body", b"")
                match = _ID.search(state["seen"])
                if match:  # an id someone else owns keeps its owner (fail closed)
                    self._owner.setdefault(match.group(1).decode(), principal)
                if match or len(state["seen"]) > _SCAN_LIMIT or not message.get("more_body", False):
                    state["done"], state["seen"] = True, b""
            await send(message)

        return wrapped


__all__ = ["CREATE_PATH", "ResponseOwners", "stored_response_id"]
