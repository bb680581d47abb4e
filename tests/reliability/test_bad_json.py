"""Issue 17, case 3: unparseable or too-deeply nested JSON is a 400, never a 500 or a traceback.

The parse happens before any bundle is needed, so the app runs without one (``load=False``);
every body stays under ``max_body_bytes`` so the answer is about its shape, not its size.
"""

from __future__ import annotations

import asyncio

from pipelines.core.settings import Settings
from serving.config import ServingConfig
from tests.helpers import Service

DEEP = [
    b"[" * 5000,  # unclosed: the parser recurses before it finds the end
    b"[" * 5000 + b"]" * 5000,  # valid JSON, 5000 levels
    b"{" + b'"a":{' * 2500 + b"}" * 2501,  # nested objects
    b'{"user_id": "u1", "exclude": ' + b"[" * 2000 + b"]" * 2000 + b"}",  # deep inside a field
    b'{"user_id": "u1", "context": ' + b'{"categories": ' * 40 + b"[]" + b"}" * 41,  # past 32
]
BROKEN = [b"{not json", b"\xff\xfe\x00garbage", b"", b'{"user_id": "u1"', b"[1, 2,]", b"NaN-ish"]


def post_all(settings: Settings, bodies: list[bytes]) -> list[tuple[str, bytes, int, str]]:
    async def go():
        out = []
        async with Service(settings, ServingConfig(reload_interval_s=0), load=False) as s:
            for path in ("/recommend", "/feedback"):
                for body in bodies:
                    r = await s.client.post(
                        path, content=body, headers={"content-type": "application/json"}
                    )
                    out.append((path, body[:40], r.status_code, r.text))
            alive = await s.client.get("/health/live")
            assert alive.status_code == 200  # the service keeps answering
        return out

    return asyncio.run(go())


def test_too_deep_json_is_400_not_500(settings: Settings):
    for path, body, status, text in post_all(settings, DEEP):
        assert status == 400, (path, body, status, text[:300])
        assert "Traceback" not in text and "RecursionError" not in text
        assert "nest" in text  # says what is wrong


def test_unparseable_json_is_400(settings: Settings):
    for path, body, status, text in post_all(settings, BROKEN):
        assert status == 400, (path, body, status, text[:300])
        assert "Traceback" not in text
