"""API tokens (role admin): ``GET /v1/tokens``, ``POST /v1/tokens`` (the answer carries the
token, the only time it is shown), ``POST /v1/tokens/{id}/revoke``. Tokens are revoked, never
deleted. A token made here counts, for approvals, as the root identity of the admin who made it
(:mod:`heald.auth`): an admin cannot mint a second approver."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from heald.auth import Principal, issue_token, require
from heald.engine import Runtime
from heald.http_limits import DbId, HealdRoute
from heald.models import Role, utcnow
from heald.store import IdentityConflict, NotFound

#: The longest lifetime a token can be given (100 years): a datetime ends at year 9999.
MAX_LIFETIME_SECONDS = 100 * 365 * 86400


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, description="the identity the token authenticates")
    role: Role
    expires_in_seconds: float | None = Field(default=None, gt=0, le=MAX_LIFETIME_SECONDS,
                                              description="lifetime in seconds, at most 100 years; default: until revoked")


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["tokens"], route_class=HealdRoute)
    admin = Depends(require(Role.admin))

    @router.get("/v1/tokens")
    def list_tokens(who: Principal = admin) -> list[dict[str, Any]]:
        """Every token (never the token itself), revoked ones included."""
        return [t.model_dump(mode="json") for t in rt.store.list_tokens()]

    @router.post("/v1/tokens", status_code=201)
    def create_token(body: TokenIn, who: Principal = admin) -> dict[str, Any]:
        """Create a token; the answer's ``token`` is shown this once. Its identity counts as the
        caller's root identity when approvals are counted (``root_identity``); 409 when the
        name is an identity that counts as someone else."""
        expires = utcnow() + timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
        try:
            record, token = issue_token(rt.store, name=body.name, role=body.role, created_by=who.actor,
                                        sponsor=who.identity, expires_at=expires)
        except IdentityConflict as exc:
            raise HTTPException(409, detail=[{"loc": ["body", "name"], "msg": str(exc)}]) from exc
        except ValueError as exc:
            raise HTTPException(422, detail=[{"loc": ["body", "name"], "msg": str(exc)}]) from exc
        return {**record.model_dump(mode="json"), "token": token}

    @router.post("/v1/tokens/{token_id}/revoke")
    def revoke_token(token_id: DbId, who: Principal = admin) -> dict[str, Any]:
        """Revoke a token: it stops working at once and stays listed as revoked."""
        try:
            return rt.store.revoke_token(token_id, who.actor).model_dump(mode="json")
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    return router
