"""Sign-in for the review app: bcrypt-hashed passwords from a users file or secret, or IAP's signed header.

Password mode: the users YAML maps each user name to a bcrypt hash (`histoxai app --hash-password NAME`
prints an entry). Nothing of a page is rendered before sign-in: `sign_in_form` shows the form and
stops the script. Guessing is limited per user name and client address by `limiter.SignInLimiter` (one per
process, shared by all sessions; its record is shared by instances through the file in
`AppSettings.sign_in_record`). IAP mode: the app sits behind Identity-Aware Proxy, which signs every request
it lets through; `current_user` verifies that signature (ES256, IAP's public keys), the audience and the
expiry on every run of the script, and signs the session out when it no longer verifies.
"""

from __future__ import annotations

import json
import re
import threading
import time

from histoxai import storage
from histoxai.app import limiter
from histoxai.app.settings import ENV, AppSettings
from histoxai.errors import InputError

SESSION_USER = "histoxai_user"
IAP_HEADER = "X-Goog-IAP-JWT-Assertion"
BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; bcrypt 5 refuses longer passwords
WRONG_PASSWORD = "Unknown user name or wrong password."
IAP_KEYS_TTL_S = 300.0  # IAP rotates its keys: they are fetched again after this long, or for an unknown
IAP_KEYS_REFETCH_S = 30.0  # key id, but not more often than this (a forged key id costs one fetch at most)
IAP_CLOCK_SKEW_S = 30  # a token issued up to this far "in the future" (clocks differ) is accepted
_ROUNDS = 12
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


def hash_password(password: str, rounds: int = _ROUNDS) -> str:
    import bcrypt

    data = password.encode("utf-8")
    if not data:
        raise InputError("password: empty; expected at least one character")
    if len(data) > BCRYPT_MAX_BYTES:
        raise InputError(f"password: {len(data)} bytes; bcrypt uses at most {BCRYPT_MAX_BYTES}")
    return bcrypt.hashpw(data, bcrypt.gensalt(rounds)).decode("ascii")


# a valid hash of a random password: unknown user names cost as much time as known ones
_DUMMY_HASH = "$2b$12$UFCy6PcR6W787.BAh0X0euXq4l/WORqXQfcp/opLjwqZA0JkX4fjq"


def check_password(users: dict[str, str], name: str, password: str) -> bool:
    import bcrypt

    stored = users.get(name)
    data = password.encode("utf-8")
    if len(data) > BCRYPT_MAX_BYTES:
        return False
    match = bcrypt.checkpw(data, (stored or _DUMMY_HASH).encode("ascii"))
    return bool(match and stored)


def parse_users(text: str, source: str) -> dict[str, str]:
    """name -> bcrypt hash from YAML text; InputError naming the source and entry when malformed."""
    import yaml

    try:
        users = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"{source}: not valid YAML ({err})") from err
    if not isinstance(users, dict) or not users:
        raise InputError(f"{source}: expected a YAML mapping of user name -> bcrypt hash, with at least "
                         "one user (make entries with `histoxai app --hash-password NAME`)")
    for name, hashed in users.items():
        if not isinstance(name, str) or not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            raise InputError(f"{source}: user {name!r}: expected a bcrypt hash ($2b$..., 60 characters)")
    return users


def load_users(settings: AppSettings) -> dict[str, str]:
    """From the users file when one is named, else from the YAML text (e.g. a secret in a variable)."""
    if settings.users_file:
        return parse_users(storage.read_text(settings.users_file), settings.users_file)
    return parse_users(settings.users_yaml, f"${ENV['users_yaml']}")


_IAP_KEYS: dict[str, tuple[float, dict]] = {}  # certs URL -> (fetched at, key id -> PEM)
_LOCK = threading.Lock()


def _iap_keys(certs_url: str, key_id: str) -> dict:
    """IAP's public keys, cached; fetched again when stale, or when key_id is unknown (rotation)."""
    from google.auth.transport import requests as auth_requests

    with _LOCK:
        fetched, keys = _IAP_KEYS.get(certs_url, (0.0, {}))
        age = time.monotonic() - fetched
        if fetched and (age < IAP_KEYS_TTL_S and key_id in keys or age < IAP_KEYS_REFETCH_S):
            return keys
        response = auth_requests.Request()(certs_url, method="GET")
        if response.status != 200:
            raise InputError(f"{certs_url}: HTTP {response.status}; expected IAP's public keys")
        keys = json.loads(response.data.decode("utf-8"))
        if not isinstance(keys, dict):
            raise InputError(f"{certs_url}: expected a JSON object of key id -> public key")
        _IAP_KEYS[certs_url] = (time.monotonic(), keys)
        return keys


def verify_iap(token: str, audience: str, certs_url: str) -> str:
    """The signed-in user's e-mail from IAP's JWT header; InputError when the token does not verify
    (signature, ES256, audience, issuer, issued-at with IAP_CLOCK_SKEW_S allowed, expiry with none)."""
    from google.auth import exceptions as auth_exc
    from google.auth import jwt

    try:
        header = jwt.decode_header(token)
        if header.get("alg") != "ES256":
            raise InputError(f"{IAP_HEADER}: signed with {header.get('alg')!r}; expected ES256")
        keys = _iap_keys(certs_url, str(header.get("kid")))
        claims = jwt.decode(token, certs=keys, audience=audience, clock_skew_in_seconds=IAP_CLOCK_SKEW_S)
    except (ValueError, auth_exc.GoogleAuthError) as err:
        raise InputError(f"{IAP_HEADER}: rejected ({err})") from err
    if float(claims["exp"]) <= time.time():  # decode() allowed the skew for exp too
        raise InputError(f"{IAP_HEADER}: rejected (token expired at {claims['exp']})")
    if claims.get("iss") != "https://cloud.google.com/iap":
        raise InputError(f"{IAP_HEADER}: not issued by IAP for a user (iss {claims.get('iss')!r}, "
                         "expected 'https://cloud.google.com/iap')")
    if not claims.get("email"):
        raise InputError(f"{IAP_HEADER}: not issued by IAP for a user (no email claim: a service "
                         "account or a forged token)")
    return str(claims["email"])


def current_user(settings: AppSettings) -> str | None:
    """The signed-in user, or None. Behind IAP the signed header is verified on every run of the script: a
    session whose token no longer verifies (expired, keys rotated) is signed out and the script stops."""
    import streamlit as st

    if settings.auth == "iap":
        token = st.context.headers.get(IAP_HEADER)
        if not token:
            st.session_state.pop(SESSION_USER, None)
            st.error("Sign-in required: this app is served through Identity-Aware Proxy only.")
            st.stop()
        try:
            st.session_state[SESSION_USER] = verify_iap(token, settings.iap_audience, settings.iap_certs_url)
        except InputError as err:
            st.session_state.pop(SESSION_USER, None)
            st.error(f"Signed out: {err}. Reload the page to sign in again through Identity-Aware Proxy.")
            st.stop()
    return st.session_state.get(SESSION_USER) or None


_LIMITERS: dict[str, limiter.SignInLimiter] = {}


def sign_in_limiter(settings: AppSettings) -> limiter.SignInLimiter:
    """The process's limiter for the settings' shared record (every session of the process shares it)."""
    where = settings.sign_in_record
    with _LOCK:
        if where not in _LIMITERS:
            _LIMITERS[where] = limiter.SignInLimiter(limiter.record_at(where) if where else None)
        return _LIMITERS[where]


def client_address(peer: str | None, forwarded_for: list[str], trusted_proxies: int) -> str | None:
    """The client's address: the connection's peer, or, behind `trusted_proxies` proxies that each append
    to X-Forwarded-For, the entry the outermost of them appended (entries further left can be forged)."""
    peer = peer if isinstance(peer, str) and peer else None  # no address: e.g. loopback, or a test client
    if trusted_proxies <= 0:
        return peer
    hops = [hop.strip() for value in forwarded_for if isinstance(value, str)
            for hop in value.split(",") if hop.strip()]
    return hops[-min(trusted_proxies, len(hops))] if hops else peer


def sign_in_form(settings: AppSettings) -> None:
    """The password sign-in form; stops the script (a correct password reruns it signed in)."""
    import streamlit as st

    try:
        users = load_users(settings)
    except InputError as err:
        st.error(f"Sign-in is not configured: {err}")
        st.stop()
    st.title("histoxai review")
    with st.form("sign-in"):
        name = st.text_input("User name", key="sign_in_name")
        password = st.text_input("Password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        client = client_address(st.context.ip_address, st.context.headers.get_all("X-Forwarded-For"),
                                settings.trusted_proxies)
        limits = sign_in_limiter(settings)
        verdict = limits.attempt(name, client)
        if not verdict.allowed:  # the same for names with and without an account
            st.error(verdict.message())
            st.stop()
        if check_password(users, name, password):
            limits.succeeded(name, client, verdict)
            st.session_state[SESSION_USER] = name
            st.rerun()
        limits.failed(name, client, verdict)
        st.error(WRONG_PASSWORD)
    st.stop()


def sign_out_button(settings: AppSettings) -> None:
    """Password mode only: behind IAP, signing out is IAP's business."""
    import streamlit as st

    user = st.session_state.get(SESSION_USER, "")
    if settings.auth == "password" and user and st.sidebar.button(f"Sign out ({user})", key="sign_out"):
        st.session_state.pop(SESSION_USER, None)
        st.rerun()
