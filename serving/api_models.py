"""The HTTP API's request bodies (pydantic) and how their validation errors are reported.

``RecommendBody``'s limits come from the :class:`~serving.config.ServingConfig` (longest user id,
``k`` default and maximum, most context categories), so :func:`recommend_body` builds the class
per config; :class:`FeedbackBody`'s are fixed. Unknown fields are refused (422).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config import ServingConfig

USER_ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"
"""The characters a user id may have (1..``max_user_id_len`` of them)."""


class FeedbackBody(BaseModel):
    """``POST /feedback``: an outcome (``click``, ``purchase`` or ``rating``) of an item shown in
    request ``request_id``. ``value`` is a finite number or absent; what it may be depends on the
    event and the config (:func:`serving.feedback.feedback_value`: a click's is 1, a purchase's
    in (0, ``max_purchase_value``], a rating's in [1, 5] and required)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    request_id: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=256)
    event: Literal["click", "purchase", "rating"] = "click"
    value: float | None = None


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
    body itself is wrong), the 422 answer's ``detail``."""
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "error": e["msg"]}
        for e in exc.errors(include_url=False)
    ]
