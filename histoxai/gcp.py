"""Google Cloud credentials and Vertex AI failures as one clear line each, for every layer that calls it.

`default_credentials` finds Application Default Credentials and the project; `vertex_errors` turns what
the aiplatform client raises (no or refused credentials, a refused request, an unreachable endpoint)
into one InputError naming what was being done. `label_value` and `label_key` make any text fit Vertex
AI's label rules. The pipeline submission (pipelines/submit.py) and the Vertex AI model registry
(histoxai/model_registry/vertex.py) share them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from histoxai.errors import InputError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_LABEL_MAX = 63


def default_credentials(project: str | None, what: str = "submit"):
    """Application Default Credentials and the project to use, or one clear InputError."""
    import google.auth
    from google.auth import exceptions as auth_exc

    try:
        credentials, adc_project = google.auth.default(scopes=SCOPES)
    except auth_exc.DefaultCredentialsError as err:
        raise InputError(f"{what}: no Google Cloud credentials; run `gcloud auth application-default login` "
                         f"or set GOOGLE_APPLICATION_CREDENTIALS ({str(err).splitlines()[0]})") from err
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or adc_project
    if not project:
        raise InputError(f"{what}: no Google Cloud project; pass --project or set GOOGLE_CLOUD_PROJECT")
    return credentials, project


def first_line(err: BaseException) -> str:
    """An error's message, first line only, without the REST client's "GET https://...: " prefix."""
    text = str(getattr(err, "message", "") or err).strip()
    text = re.sub(r"^[A-Z]+ https?://\S+: ", "", text)
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def vertex_errors(what: str, exists: type[InputError] = InputError, thing: str = "it") -> Iterator[None]:
    """One InputError line for a failed Vertex AI call; an ALREADY_EXISTS answer (see `already_exists`)
    raises `exists` ("Vertex AI already has `thing`")."""
    from google.api_core import exceptions as api_exc
    from google.auth import exceptions as auth_exc

    try:
        yield
    except api_exc.Conflict as err:  # over REST, ALREADY_EXISTS arrives as a plain 409 Conflict
        if not already_exists(err):
            raise InputError(f"{what}: Vertex AI refused the request: {err.code} {first_line(err)}") from err
        raise exists(f"{what}: Vertex AI already has {thing} ({first_line(err)})") from err
    except auth_exc.DefaultCredentialsError as err:
        raise InputError(f"{what}: no Google Cloud credentials; run `gcloud auth application-default login` "
                         "or set GOOGLE_APPLICATION_CREDENTIALS") from err
    except auth_exc.RefreshError as err:
        raise InputError(f"{what}: the Google Cloud credentials were refused ({first_line(err)}); "
                         "run `gcloud auth application-default login` again") from err
    except api_exc.GoogleAPICallError as err:
        raise InputError(f"{what}: Vertex AI refused the request: {err.code} {first_line(err)}") from err
    except (api_exc.RetryError, ConnectionError) as err:
        raise InputError(f"{what}: Vertex AI unreachable ({first_line(err)})") from err


def already_exists(err: BaseException) -> bool:
    """Whether a Google API error says ALREADY_EXISTS: as a gRPC status, or as a REST 409 whose JSON body
    names it (the REST client maps every 409, ABORTED too, to Conflict and keeps the status only there)."""
    from google.api_core import exceptions as api_exc

    if isinstance(err, api_exc.AlreadyExists):
        return True
    try:
        return err.response.json()["error"]["status"] == "ALREADY_EXISTS"
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


def label_value(text: object) -> str:
    """`text` as a Vertex AI label value: lowercase letters, digits, _ and -, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]+", "-", str(text).lower()).strip("-")[:_LABEL_MAX]


def label_key(text: object) -> str:
    """`text` as a Vertex AI label key: a label value that starts with a letter."""
    value = label_value(text)
    return value if value[:1].isalpha() else f"k-{value}"[:_LABEL_MAX]
