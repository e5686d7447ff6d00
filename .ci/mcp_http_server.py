"""A small MCP server over streamable HTTP, for Cairn's tests: `python mcp_http_server.py PORT`.

Listens on 127.0.0.1 only. Tools: `add` (read-only), and `remember`, which writes a note and
answers with the idempotency key Cairn sent in the request's `_meta` and how many times that key
was seen (so a test can tell a repeated write from a new one).
"""

import json
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

KEY = "cairn.dev/idempotency-key"
server = MCPServer("cairn-test-http")
seen: dict[str, int] = {}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def remember(note: str, ctx: Context) -> str:
    """Keeps a note; answers with the call's idempotency key and how often it was seen."""
    meta = ctx.request_context.meta
    if meta is None:
        key = None
    elif isinstance(meta, dict):
        key = meta.get(KEY)
    else:
        key = (getattr(meta, "model_extra", None) or {}).get(KEY)
    seen[str(key)] = seen.get(str(key), 0) + 1
    return json.dumps({"note": note, "key": key, "times": seen[str(key)]})


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
