"""The review app's settings, passed from `histoxai app` to the Streamlit script in environment variables.

HISTOXAI_APP_RUN        the run folder shown first (local path or gs:// URI)
HISTOXAI_APP_ROOT       nothing outside this folder can be read through the app (default: the run)
HISTOXAI_APP_AUTH       password (default) or iap
HISTOXAI_APP_USERS_FILE YAML file (local or gs://) of user name -> bcrypt hash, for password sign-in
HISTOXAI_APP_USERS      the same YAML as text (e.g. a Secret Manager secret exposed as a variable)
HISTOXAI_IAP_AUDIENCE   with iap: the expected audience of IAP's signed header
HISTOXAI_IAP_CERTS_URL  with iap: where IAP's public keys are (default: Google's)
HISTOXAI_APP_SIGN_IN_STATE   the record of failed sign-ins that instances share (local or gs://; default: the
                        users file's path + .sign-in.json; "none", or no users file: this process only)
HISTOXAI_APP_TRUSTED_PROXIES how many proxies in front of the app append to X-Forwarded-For (default 0: the
                        header is ignored and a client is known by its connection's address)
"""

from __future__ import annotations

import dataclasses
import os

from histoxai.errors import InputError

AUTH_MODES = ("password", "iap")
IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"
ENV = {"run": "HISTOXAI_APP_RUN", "root": "HISTOXAI_APP_ROOT", "auth": "HISTOXAI_APP_AUTH",
       "users_file": "HISTOXAI_APP_USERS_FILE", "users_yaml": "HISTOXAI_APP_USERS",
       "iap_audience": "HISTOXAI_IAP_AUDIENCE", "iap_certs_url": "HISTOXAI_IAP_CERTS_URL",
       "sign_in_state": "HISTOXAI_APP_SIGN_IN_STATE", "trusted_proxies": "HISTOXAI_APP_TRUSTED_PROXIES"}
NO_SHARED_STATE = "none"
SIGN_IN_STATE_SUFFIX = ".sign-in.json"


@dataclasses.dataclass(frozen=True)
class AppSettings:
    run: str
    root: str
    auth: str = "password"
    users_file: str = ""
    users_yaml: str = ""
    iap_audience: str = ""
    iap_certs_url: str = IAP_CERTS_URL
    sign_in_state: str = ""
    trusted_proxies: int = 0

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
        if not isinstance(self.trusted_proxies, int) or not 0 <= self.trusted_proxies <= 16:
            raise InputError(f"{ENV['trusted_proxies']}={self.trusted_proxies!r}: expected a whole number "
                             "from 0 to 16 (proxies in front of the app that append to X-Forwarded-For)")

    @property
    def sign_in_record(self) -> str:
        """Where failed sign-ins are shared between instances ('' for this process only)."""
        if self.sign_in_state == NO_SHARED_STATE:
            return ""
        return self.sign_in_state or (self.users_file + SIGN_IN_STATE_SUFFIX if self.users_file else "")

    def to_env(self) -> dict[str, str]:
        return {ENV[f.name]: str(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name)}


def from_env(environ=None) -> AppSettings:
    environ = os.environ if environ is None else environ
    values = {name: environ.get(var, "") for name, var in ENV.items()}
    values["root"] = values["root"] or values["run"]
    values["auth"] = values["auth"] or "password"
    values["iap_certs_url"] = values["iap_certs_url"] or IAP_CERTS_URL
    values["trusted_proxies"] = whole_number(values["trusted_proxies"] or "0", ENV["trusted_proxies"])
    return AppSettings(**values)


def whole_number(text: str, name: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise InputError(f"{name}={text!r}: expected a whole number") from None
