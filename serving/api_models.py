"""The HTTP API's request bodies (pydantic), how their validation errors are reported, and the
service's OpenAPI document.

``RecommendBody``'s limits come from the :class:`~serving.config.ServingConfig` (longest user id,
``k`` default and maximum, most context categories), so :func:`recommend_body` builds the class
per config; :class:`FeedbackBody`'s and :class:`ExperimentBody`'s are fixed. Unknown fields are
refused (422).

The handlers read their bodies and queries by hand (the in-flight guard buffers the body first),
so FastAPI's generated document lists the routes without their inputs: :func:`openapi_document`
adds them from the models here (what ``tests/reliability/test_api_fuzz.py`` fuzzes).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import models_json_schema

from serving.config import ServingConfig

USER_ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"
"""The characters a user id may have (1..``max_user_id_len`` of them)."""
NAME_PATTERN = USER_ID_PATTERN
"""The characters of an experiment name or salt (1..128 of them): they are hashed with every
user id to route it (``serving.routing.bucket``), so text that cannot be encoded is refused."""


class FeedbackBody(BaseModel):
    """``POST /feedback``: an outcome (``click``, ``purchase`` or ``rating``) of an item shown in
    request ``request_id``. ``value`` is a finite number or absent; what it may be depends on the
    event and the config (:func:`serving.feedback.feedback_value`: a click's is 1, a purchase's
    in (0, ``max_purchase_value``], a rating's in [1, 5] and required)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    request_id: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=256)
    event: Literal["click", "purchase", "rating"] = "click"
    value: float | None = Field(default=None, strict=True)


class ExperimentBody(BaseModel):
    """``POST /admin/experiment``: the A/B settings to change, each optional (absent: kept;
    ``null`` is refused): ``challenger_share`` in [0, 1], ``explore_rate`` in [0, 1), and the
    ``experiment`` name and ``salt`` (:data:`NAME_PATTERN`). Numbers must be JSON numbers (not
    strings or booleans) and finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    challenger_share: float | None = Field(default=None, ge=0.0, le=1.0, strict=True)
    explore_rate: float | None = Field(default=None, ge=0.0, lt=1.0, strict=True)
    experiment: str | None = Field(default=None, min_length=1, max_length=128, pattern=NAME_PATTERN)
    salt: str | None = Field(default=None, min_length=1, max_length=128, pattern=NAME_PATTERN)

    @model_validator(mode="after")
    def _no_nulls(self) -> ExperimentBody:
        nulls = sorted(f for f in self.model_fields_set if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"null is not a value of {nulls} (leave a field out to keep it)")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the body set: keyword arguments of ``ServingConfig.with_``."""
        return self.model_dump(exclude_unset=True)


def recommend_body(cfg: ServingConfig) -> type[BaseModel]:
    """The ``/recommend`` body model under ``cfg``: ``user_id`` (:data:`USER_ID_PATTERN`, at
    most ``max_user_id_len`` chars), ``k`` in [1, ``k_max``] (default ``k_default``),
    ``context.categories`` (at most ``max_categories``) and ``exclude`` (at most 1000 ids)."""

    class Context(BaseModel):
        model_config = ConfigDict(extra="forbid")
        categories: list[str] = Field(default_factory=list, max_length=cfg.max_categories)

    class RecommendBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: str = Field(min_length=1, max_length=cfg.max_user_id_len, pattern=USER_ID_PATTERN)
        k: int = Field(default=cfg.k_default, ge=1, le=cfg.k_max)
        context: Context = Field(default_factory=Context)
        exclude: list[str] = Field(default_factory=list, max_length=1000)

    return RecommendBody


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """``[{"field": "a.b", "error": message}]`` of a validation failure (``"body"`` when the
    body itself is wrong), the 422 answer's ``detail``; a field name sent by the client (an
    unknown one) is made safe to encode (:func:`safe_text`)."""
    return [
        {"field": safe_text(".".join(str(p) for p in e["loc"])) or "body",
         "error": safe_text(e["msg"])}
        for e in exc.errors(include_url=False)
    ]  # fmt: skip


def safe_text(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates, which JSON's ``\\ud800``
    escapes produce) written as backslash escapes: safe to put in a JSON answer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --- the OpenAPI document -------------------------------------------------------------------

ADMIN_PATHS = ("/admin/reload", "/admin/experiment")
"""Paths that need ``Authorization: Bearer <RECLOOP_ADMIN_TOKEN>``."""


def _json_body(name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def _recommend_query(cfg: ServingConfig) -> list[dict[str, Any]]:
    """``GET /recommend``'s query parameters."""
    user = {"type": "string", "minLength": 1, "maxLength": cfg.max_user_id_len,
            "pattern": USER_ID_PATTERN}  # fmt: skip
    k = {"type": "integer", "minimum": 1, "maximum": cfg.k_max, "default": cfg.k_default}
    return [
        {"name": "user_id", "in": "query", "required": True, "schema": user},
        {"name": "k", "in": "query", "required": False, "schema": k},
        {"name": "categories", "in": "query", "required": False, "schema": {"type": "string"},
         "description": f"comma-separated, at most {cfg.max_categories}"},
    ]  # fmt: skip


ERRORS = {
    "400": "malformed JSON, or nested deeper than 32 levels",
    "401": "missing or wrong admin token",
    "404": "unknown request (feedback); admin endpoints off",
    "408": "body not received within body_timeout_s",
    "413": "body over max_body_bytes",
    "422": "invalid fields",
    "503": "overloaded, no champion loaded, or (feedback) the shared request store unreachable",
}
"""The error answers an operation may give (``{"detail": ...}``); never a 5xx but 503."""


def openapi_document(app: Any, cfg: ServingConfig) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document: FastAPI's list of ``app``'s routes (a copy; the app
    serves none, ``openapi_url=None``) with what the handlers read by hand filled in: the JSON
    bodies (:func:`recommend_body` under ``cfg``, :class:`FeedbackBody`,
    :class:`ExperimentBody`), ``GET /recommend``'s query, the admin bearer token, the error
    answers (:data:`ERRORS`) and one ``operationId`` per operation."""
    with warnings.catch_warnings():  # GET and POST /admin/experiment share one handler's id
        warnings.simplefilter("ignore", UserWarning)
        doc = copy.deepcopy(app.openapi())
    models = [(recommend_body(cfg), "validation"), (FeedbackBody, "validation"),
              (ExperimentBody, "validation")]  # fmt: skip
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs["$defs"])
    components["securitySchemes"] = {"admin": {"type": "http", "scheme": "bearer"}}
    inputs: dict[tuple[str, str], dict[str, Any]] = {
        ("/recommend", "post"): {"requestBody": _json_body("RecommendBody")},
        ("/recommend", "get"): {"parameters": _recommend_query(cfg)},
        ("/feedback", "post"): {"requestBody": _json_body("FeedbackBody")},
        ("/admin/experiment", "post"): {"requestBody": _json_body("ExperimentBody")},
    }
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            op.update(inputs.get((path, method), {}))
            op["operationId"] = f"{method}_{path.strip('/').replace('/', '_')}"
            if path in ADMIN_PATHS:
                op["security"] = [{"admin": []}]
            if path != "/health/live":
                op["responses"].update({code: {"description": why} for code, why in ERRORS.items()})
    missing = [f"{m.upper()} {p}" for p, m in inputs if m not in doc["paths"].get(p, {})]
    if missing:
        raise ValueError(f"openapi_document: the app has no route for {missing}")
    return doc
