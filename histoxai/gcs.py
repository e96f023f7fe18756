"""The Cloud Storage client behind histoxai.storage: one client per process, bounded waits, clear errors.

The client's own retry keeps trying an unreachable endpoint for 120 s per call; every call here passes
`BOUND` instead: at most HISTOXAI_GCS_DEADLINE_S (default 30) seconds of retrying, a 10 s connect
timeout and 300 s per read or upload request (a large shard on a slow link), so a wrong endpoint or
a network outage fails within about half a minute, naming the URI.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

from histoxai.errors import InputError

DEADLINE_ENV = "HISTOXAI_GCS_DEADLINE_S"


@functools.cache
def bound() -> dict:
    """Keyword arguments for every client call: request timeouts and a retry with a deadline."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    deadline = float(os.environ.get(DEADLINE_ENV) or 30)
    return {"timeout": (10, 300), "retry": DEFAULT_RETRY.with_deadline(deadline).with_timeout(deadline)}


@functools.lru_cache(maxsize=1)
def client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # The client picks anonymous credentials for the emulator; a project id is still required.
        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"))
    return storage.Client()


def reset_client() -> None:
    """Forget the cached client and bounds (after STORAGE_EMULATOR_HOST, credentials or the deadline
    change)."""
    client.cache_clear()
    bound.cache_clear()


def blob(uri: str, generation: int | None = None):
    from histoxai.storage import split_gcs

    bucket, key = split_gcs(uri)
    return client().bucket(bucket).blob(key, generation=generation)


@contextlib.contextmanager
def errors(uri: str) -> Iterator[None]:
    """Turn the client's exceptions into one clear InputError naming the URI."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    try:
        yield
    except gexc.NotFound as err:
        raise InputError(f"{uri}: not found (expected an existing bucket and object)") from err
    except gexc.Forbidden as err:
        raise InputError(f"{uri}: access denied; check the credentials' permissions on the bucket") from err
    except auth_exc.DefaultCredentialsError as err:
        raise InputError(
            f"{uri}: no Google Cloud credentials; run `gcloud auth application-default login`"
        ) from err
    except (gexc.GoogleAPICallError, gexc.RetryError, OSError) as err:  # OSError: requests' connection errors
        cause = getattr(err, "cause", None) or err
        raise InputError(f"{uri}: storage unreachable (retried for up to {bound()['retry'].deadline:g} s; "
                         f"{type(cause).__name__}: {str(cause)[:160]})") from err
