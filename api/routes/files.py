"""OpenAI's Files API: upload, list, read and delete the files a key keeps (batch inputs and outputs, audio)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from api.batch_schemas import FileDeleted, FilePublic, FilesPublic
from api.deps import PrincipalDep, StateDep
from api.errors import NotFound, Unprocessable
from api.intake.jobs import refusals
from jobstore.creation import storage_quota

router = APIRouter(prefix="/v1", tags=["OpenAI compatible"])

PURPOSES = ("batch", "user_data", "assistants", "vision", "fine-tune", "evals")


@router.post("/files", response_model=FilePublic)
async def upload_file(
    state: StateDep,
    principal: PrincipalDep,
    # Both checked below, where a refusal names the field; documented, so that clients (and fuzzers) know.
    file: Annotated[UploadFile, File(json_schema_extra={"minLength": 1})],
    purpose: Annotated[str, Form(json_schema_extra={"enum": list(PURPOSES)})],
) -> FilePublic:
    if purpose not in PURPOSES:
        raise Unprocessable(f"purpose: must be one of {', '.join(PURPOSES)}", param="purpose")
    data = await file.read()  # the body cap (MAX_UPLOAD_MB) has already held it to size
    if not data:
        raise Unprocessable("file: the file is empty", param="file")
    with refusals(state):  # STORAGE_QUOTA_MB_PER_KEY: 413 before anything is stored
        record = await state.files.put_file(
            principal.id, file.filename or "upload", purpose, data, quota=storage_quota(state.settings)
        )
    return FilePublic.model_validate(record)


@router.get("/files", response_model=FilesPublic)
async def list_files(state: StateDep, principal: PrincipalDep, purpose: str | None = None) -> FilesPublic:
    files = await state.files.list_files(principal.id, purpose)
    return FilesPublic(data=[FilePublic.model_validate(record) for record in files])


@router.get("/files/{file_id}", response_model=FilePublic)
async def get_file(file_id: str, state: StateDep, principal: PrincipalDep) -> FilePublic:
    record = await state.files.get_file(file_id, principal.id)
    if record is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return FilePublic.model_validate(record)


@router.get(
    "/files/{file_id}/content",
    response_class=Response,
    responses={200: {"description": "The file's bytes as uploaded", "content": {"application/octet-stream": {}}}},
)
async def file_content(file_id: str, state: StateDep, principal: PrincipalDep) -> Response:
    data = await state.files.file_content(file_id, principal.id)
    if data is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return Response(data, media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, state: StateDep, principal: PrincipalDep) -> FileDeleted:
    if not await state.files.delete_file(file_id, principal.id):
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return FileDeleted(id=file_id, deleted=True)
