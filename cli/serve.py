"""``retr serve``: a search service and a web page over one or more databases (FastAPI under uvicorn)."""

from __future__ import annotations

import logging
import os

import click

from .main import main
from .options import DEVICE


@main.command("serve")
@click.option("--db", "dbs", required=True, multiple=True, type=click.Path(path_type=str),
              help="Database directory; repeat to serve several (each named after its folder, without .retr).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; another address than loopback exposes the service to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--token", envvar="RETR_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every route but /health and the page's files "
                   "[env: RETR_TOKEN].")
@click.option("--max-upload", type=click.FloatRange(min=0.001), default=20.0, show_default=True,
              help="Largest request body in MB (larger: 413).")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="An origin allowed to call the service from its pages (repeatable) [default: none].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most images per forward pass (and queries per search) when concurrent queries are batched.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="How long a batch waits for more concurrent queries before it runs.")
@click.option("--reload-s", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="How often each database is checked for a newer committed state (0: never).")
@DEVICE
def serve_cmd(dbs, host, port, token, max_upload, cors_origins, batch_size, batch_wait_ms, reload_s, device):
    """Serve the databases --db: POST /search, GET /images/{id}[/thumb], /info, /health, /openapi.json and a
    web page at /.

    The network and the index of each database are loaded once. While `retr index` writes a database, the service
    answers from its last complete committed state and moves to the next one atomically.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A server runs short parallel regions between requests: OpenMP threads that spin between them (libgomp's
    # default) take the cores from the requests, all the more on a shared machine. Read when torch and Faiss load
    # OpenMP, below; an OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import uvicorn
        from threadpoolctl import threadpool_limits

        from ..serve import ServeOptions, create_app
    except ImportError as e:  # the service's dependencies are in install_requires; a partial install lacks them
        raise click.ClickException(f"retr serve needs {e.name}: pip install fastapi uvicorn python-multipart") \
            from None
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        click.echo(f"warning: serving on {host} without --token: anyone who reaches this address can search "
                   "and read the indexed images", err=True)
    # NumPy's BLAS reduces a batch of a few queries (a (m, d) x (d, p) product) faster on one thread than by
    # waking (and spinning) a pool; the forward pass and Faiss keep their own threads
    threadpool_limits(1, user_api="blas")
    options = ServeOptions(device=device, max_batch=batch_size, max_wait_ms=batch_wait_ms, reload_s=reload_s)
    app = create_app(list(dbs), token=token, max_upload=int(max_upload * (1 << 20)), options=options,
                     cors_origins=tuple(cors_origins))
    names = ", ".join(app.state.service.databases)
    click.echo(f"serving {names} on http://{'[' + host + ']' if ':' in host else host}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None, server_header=False,
                timeout_graceful_shutdown=5)
