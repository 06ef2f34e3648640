"""The app's outermost layer: HEAD wherever GET is served, and headers every response carries.

It is pure ASGI, so a request answered from memory by the fast path costs one extra call.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

EVERY_RESPONSE = [
    (b"x-content-type-options", b"nosniff"),
    # Nothing of the app is meant to be shown inside another site's frame.
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
]
# Answers under /api/ belong to one key (or say how the service is): never kept by a cache.
API_RESPONSE = [*EVERY_RESPONSE, (b"cache-control", b"no-store")]


class Edge:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        extra = API_RESPONSE if scope["path"].startswith("/api/") else EVERY_RESPONSE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_with_headers)
