"""The operator's workspace: one Session (read, compile and evaluate Hy) and its front ends."""

import sys

# httpx's __init__ imports its command-line client, which pulls in rich and click when they are
# installed (hyops's dev tools bring them): ~30 ms of every one-shot `hyops eval`. hyops never
# runs that client, so its module is marked absent before httpx is first imported here, and
# httpx falls back to its own stub `httpx.main` (the `httpx` command itself is unaffected: it
# runs in its own process). Upstream: encode/httpx#3547 moves the import out of __init__.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]
