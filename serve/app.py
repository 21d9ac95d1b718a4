"""The HTTP routes: an ASGI app (FastAPI) over a `Service`.

    app = create_app(["photos.retr"], token=None, max_upload=20 << 20)   # then uvicorn.run(app, ...)

    POST /search?db=NAME          multipart field ``image`` (+ fields k, nprobe, symmetric), or JSON
                                  {"id": N} / {"vector": [...]} (+ k, nprobe, symmetric) -> ranked results
    GET  /images/{id}?db=NAME     the indexed file of ``id``;  GET /images/{id}/thumb: a JPEG thumbnail
    GET  /info?db=NAME            count, bytes per vector, settings, skipped files
    GET  /health                  liveness (no token needed)
    GET  /openapi.json            the schema
    GET  /                        the web page (static files under /static, shipped in the package)

``db`` defaults to the first database. Errors are JSON ``{"error": "one line"}``: 400 a bad image or option, 401 a
missing token, 404 an unknown id or database, 410 an indexed file gone, 413 too large, 415 neither multipart nor
JSON, 422 a malformed field, 503 a database with no complete state yet, 500 a bug (its traceback goes to the log,
never into a response).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import asynccontextmanager
from importlib import resources

from typing import Annotated

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..indexes.config import IndexConfigError
from ..retrieval.errors import RetrError
from .guard import Guard
from .service import MAX_K, Gone, NotFound, NotReady, Query, ServeOptions, Service

log = logging.getLogger("retr.serve")

MAX_UPLOAD = 20 << 20  # bytes
MAX_ID = (1 << 63) - 1  # store ids are 8-byte keys
ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="an indexed image's id")]
PUBLIC = ("/health", "/", "/static/*", "/favicon.ico")  # no data: the page asks for the token itself


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(10, ge=1, le=MAX_K, description="results to return")
    nprobe: int | None = Field(None, ge=1, description="inverted lists visited (ivf indexes); default: the "
                                                         "database's")
    symmetric: bool = Field(False, description="quantise the query too (default: asymmetric, as retr query)")

    def query(self) -> Query:
        return Query(self.k, self.nprobe, self.symmetric)


class SearchJSON(_Params):
    """Query by an indexed image (``id``) or by a descriptor of the database's encoder (``vector``)."""

    id: int | None = Field(None, ge=0, le=MAX_ID, description="an indexed image's id: its file is described again")
    vector: list[float] | None = Field(None, description="a descriptor (d floats) of the database's encoder")

    @model_validator(mode="after")
    def _one(self):
        if (self.id is None) == (self.vector is None):
            raise ValueError("give exactly one of 'id' and 'vector' (or upload an image as multipart)")
        return self


class Result(BaseModel):
    rank: int
    score: float = Field(description="cosine similarity between the query and the stored vector")
    path: str = Field(description="relative to the database's root")
    id: int


class SearchResponse(BaseModel):
    db: str
    generation: int = Field(description="the committed state that answered")
    count: int = Field(description="images in that state")
    query: str
    results: list[Result]


class ErrorResponse(BaseModel):
    error: str


def _one_line(e: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts).replace("\n", " ")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.replace("\n", " ")}, status_code=status)


_SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary", "description": "the query image"},
            "k": {"type": "integer", "default": 10, "minimum": 1, "maximum": MAX_K},
            "nprobe": {"type": "integer", "minimum": 1},
            "symmetric": {"type": "boolean", "default": False}}}},
        "application/json": {"schema": {"$ref": "#/components/schemas/SearchJSON"}},
    },
}
_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 410, 413, 415, 422, 503)}


def create_app(dbs: list[str | os.PathLike], token: str | None = None, max_upload: int = MAX_UPLOAD,
               options: ServeOptions | None = None, cors_origins: tuple[str, ...] = ()) -> FastAPI:
    """The app serving ``dbs`` (opened now: a missing database raises here, before any port is bound).
    ``token``: bearer token every route but /health and the page needs; ``max_upload``: bytes per request;
    ``cors_origins``: origins allowed to call it from their pages (none by default)."""
    service = Service(dbs, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="retr", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Search compact-descriptor image databases built by `retr index`.")
    app.state.service = service
    static = resources.files("retr.serve") / "static"

    @app.exception_handler(NotReady)
    async def _not_ready(request, e):
        return _error(503, str(e))

    @app.exception_handler(NotFound)
    async def _not_found(request, e):
        return _error(404, str(e))

    @app.exception_handler(Gone)
    async def _gone(request, e):
        return _error(410, str(e))

    @app.exception_handler(RetrError)
    @app.exception_handler(IndexConfigError)
    async def _bad(request, e):
        return _error(400, str(e))

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def _invalid(request, e):
        return _error(422, _one_line(e))

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(static / "index.html"), media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(str(static / "favicon.svg"), media_type="image/svg+xml")

    app.mount("/static", StaticFiles(packages=[("retr.serve", "static")]), name="static")

    @app.get("/health", summary="Liveness, and whether each database has a state to answer from")
    async def health():
        return service.health()

    @app.get("/info", summary="Count, bytes per vector, settings and skipped files of a database",
             responses=_ERRORS)
    async def get_info(db: str | None = None):
        return service.info(db)

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS, openapi_extra={"requestBody": _SEARCH_BODY},
              summary="The k most similar indexed images to an uploaded image, an indexed id or a descriptor")
    async def search(request: Request, db: str | None = None):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            async with request.form(max_files=1, max_fields=8) as form:
                upload = form.get("image")
                if not isinstance(upload, UploadFile):
                    return _error(422, "image: a multipart search needs the file in a field named 'image'")
                params = _Params.model_validate({k: v for k, v in form.items() if k != "image"})
                data = await upload.read()
                name = os.path.basename(upload.filename or "upload")
            return await service.search_image(db, data, name, params.query())
        if ctype == "application/json":
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError) as e:
                return _error(400, f"the body is not valid JSON ({e})")
            q = SearchJSON.model_validate(body)
            if q.id is not None:
                return await service.search_id(db, q.id, q.query())
            return await service.search_vector(db, q.vector, q.query())
        return _error(415, "send the image as multipart/form-data (field 'image') or JSON {\"id\": N} / "
                           "{\"vector\": [...]}")

    @app.get("/images/{id}", summary="The indexed file of an id", responses=_ERRORS,
             response_class=FileResponse)
    async def image(id: ImageId, db: str | None = None):
        path = await service.image_file(db, id)
        return FileResponse(path, headers={"Cache-Control": "private, max-age=60"})

    @app.get("/images/{id}/thumb", summary="A JPEG thumbnail of an indexed image", responses=_ERRORS,
             response_class=Response)
    async def thumb(id: ImageId, db: str | None = None):
        data = await service.thumbnail(db, id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    # inner to outer: the guard (token, size cap, log line), then CORS around it (a preflight carries no token)
    app.add_middleware(Guard, token=token, max_body=max_upload, public=PUBLIC)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app
