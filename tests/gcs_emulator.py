"""gcp-storage-emulator, plus Cloud Storage's write preconditions, which the emulator ignores.

Usage as the emulator's own command: `python tests/gcs_emulator.py start --host H --port P --in-memory`.
An upload carrying `ifGenerationMatch=G` (G = 0: the object must not exist) is refused with 412
conditionNotMet, as GCS does, unless the object's generation is G. The emulator answers one request at
a time, so check and write cannot interleave. The sample registry of histoxai.pipelines.retrain relies
on this; every other request goes to the emulator unchanged.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _precondition_holds(request, response, storage, object_id: str | None) -> bool:
    wanted = request.query.get("ifGenerationMatch")
    if not wanted or object_id is None:
        return True
    try:
        current = storage.get_file_obj(request.params["bucket_name"], object_id)["generation"]
    except NotFound:
        current = "0"
    if str(current) == wanted[0]:
        return True
    response.status = HTTPStatus.PRECONDITION_FAILED
    message = "At least one of the pre-conditions you specified did not hold."
    response.json({"error": {"code": 412, "message": message,
                             "errors": [{"domain": "global", "reason": "conditionNotMet", "message": message,
                                         "locationType": "header", "location": "If-Match"}]}})
    return False


def _object_name(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        meta = data.get("meta") if "meta" in data else data
        return (meta or {}).get("name")
    return None


def _guarded(upload):
    def guarded(request, response, storage):
        if _precondition_holds(request, response, storage, _object_name(request)):
            return upload(request, response, storage)
        return None

    return guarded


objects._media_upload = _guarded(objects._media_upload)
objects._multipart_upload = _guarded(objects._multipart_upload)
objects._create_resumable_upload = _guarded(objects._create_resumable_upload)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
