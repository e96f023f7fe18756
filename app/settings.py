"""The review app's settings, passed from `histoxai app` to the Streamlit script in environment variables.

HISTOXAI_APP_RUN        the run folder shown first (local path or gs:// URI)
HISTOXAI_APP_ROOT       nothing outside this folder can be read through the app (default: the run)
HISTOXAI_APP_AUTH       password (default) or iap
HISTOXAI_APP_USERS_FILE YAML file (local or gs://) of user name -> bcrypt hash, for password sign-in
HISTOXAI_APP_USERS      the same YAML as text (e.g. a Secret Manager secret exposed as a variable)
HISTOXAI_IAP_AUDIENCE   with iap: the expected audience of IAP's signed header
HISTOXAI_IAP_CERTS_URL  with iap: where IAP's public keys are (default: Google's)
"""

from __future__ import annotations

import dataclasses
import os

from histoxai.errors import InputError

AUTH_MODES = ("password", "iap")
IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"
ENV = {"run": "HISTOXAI_APP_RUN", "root": "HISTOXAI_APP_ROOT", "auth": "HISTOXAI_APP_AUTH",
       "users_file": "HISTOXAI_APP_USERS_FILE", "users_yaml": "HISTOXAI_APP_USERS",
       "iap_audience": "HISTOXAI_IAP_AUDIENCE", "iap_certs_url": "HISTOXAI_IAP_CERTS_URL"}


@dataclasses.dataclass(frozen=True)
class AppSettings:
    run: str
    root: str
    auth: str = "password"
    users_file: str = ""
    users_yaml: str = ""
    iap_audience: str = ""
    iap_certs_url: str = IAP_CERTS_URL

    def __post_init__(self):
        if not self.run:
            raise InputError(f"{ENV['run']}: empty; expected the run folder to show (local path or gs://)")
        if self.auth not in AUTH_MODES:
            raise InputError(f"{ENV['auth']}={self.auth!r}: expected one of {', '.join(AUTH_MODES)}")
        if self.auth == "password" and not (self.users_file or self.users_yaml):
            raise InputError(f"no users for password sign-in: pass --users FILE or set {ENV['users_file']} "
                             f"or {ENV['users_yaml']} (YAML: name: bcrypt hash)")
        if self.auth == "iap" and not self.iap_audience:
            raise InputError(f"{ENV['iap_audience']}: empty; expected IAP's audience, e.g. "
                             "/projects/NUMBER/locations/REGION/services/SERVICE")

    def to_env(self) -> dict[str, str]:
        return {ENV[f.name]: str(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name)}


def from_env(environ=None) -> AppSettings:
    environ = os.environ if environ is None else environ
    values = {name: environ.get(var, "") for name, var in ENV.items()}
    values["root"] = values["root"] or values["run"]
    values["auth"] = values["auth"] or "password"
    values["iap_certs_url"] = values["iap_certs_url"] or IAP_CERTS_URL
    return AppSettings(**values)
