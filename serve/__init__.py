"""``retr serve``: a search service and a web page over retr databases (FastAPI under uvicorn).

    batcher.py   concurrent work items run together, one call per batch (the network's forward, Faiss searches)
    state.py     one database's committed state (`Snapshot`), and the atomic move to the next one
    service.py   the databases served and each kind of query, apart from HTTP
    guard.py     ASGI layer: bearer token, upload cap, security headers, one log line per request
    app.py       the routes (`create_app`)
    static/      the web page (no CDN: it works offline)

Nothing below ``serve`` and ``cli`` imports it.
"""

from .app import create_app
from .service import ServeOptions

__all__ = ["create_app", "ServeOptions"]
