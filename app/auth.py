"""Sign-in for the review app: bcrypt-hashed passwords from a users file or secret, or IAP's signed header.

Password mode: the users YAML maps each user name to a bcrypt hash (`histoxai app --hash-password NAME`
prints an entry). Nothing of a page is rendered before sign-in: `sign_in_form` shows the form and
stops the script. IAP mode: the app sits behind Identity-Aware Proxy, which signs every request it lets
through; `current_user` verifies that signature (ES256, IAP's public keys) and the audience, and refuses
otherwise.
"""

from __future__ import annotations

import re
import time

from histoxai import storage
from histoxai.app.settings import ENV, AppSettings
from histoxai.errors import InputError

SESSION_USER = "histoxai_user"
IAP_HEADER = "X-Goog-IAP-JWT-Assertion"
BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; bcrypt 5 refuses longer passwords
FAILED_SIGN_IN_DELAY_S = 1.0  # slows down guessing
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


def verify_iap(token: str, audience: str, certs_url: str) -> str:
    """The signed-in user's e-mail from IAP's JWT header; InputError when the token does not verify."""
    from google.auth import exceptions as auth_exc
    from google.auth.transport import requests as auth_requests
    from google.oauth2 import id_token

    try:
        claims = id_token.verify_token(token, auth_requests.Request(), audience=audience,
                                       certs_url=certs_url)
    except (ValueError, auth_exc.GoogleAuthError) as err:
        raise InputError(f"{IAP_HEADER}: rejected ({err})") from err
    if claims.get("iss") != "https://cloud.google.com/iap" or not claims.get("email"):
        raise InputError(f"{IAP_HEADER}: not issued by IAP for a user (iss {claims.get('iss')!r})")
    return str(claims["email"])


def current_user(settings: AppSettings) -> str | None:
    """The signed-in user, or None. Behind IAP a request without a valid signed header is refused here
    (the script stops)."""
    import streamlit as st

    if settings.auth == "iap":
        token = st.context.headers.get(IAP_HEADER)
        if not token:
            st.error("Sign-in required: this app is served through Identity-Aware Proxy only.")
            st.stop()
        if st.session_state.get("histoxai_iap_token") != token:
            try:
                st.session_state[SESSION_USER] = verify_iap(token, settings.iap_audience,
                                                            settings.iap_certs_url)
            except InputError as err:
                st.error(f"Sign-in refused: {err}")
                st.stop()
            st.session_state["histoxai_iap_token"] = token
    return st.session_state.get(SESSION_USER) or None


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
        if check_password(users, name, password):
            st.session_state[SESSION_USER] = name
            st.rerun()
        time.sleep(FAILED_SIGN_IN_DELAY_S)
        st.error("Unknown user name or wrong password.")
    st.stop()


def sign_out_button(settings: AppSettings) -> None:
    """Password mode only: behind IAP, signing out is IAP's business."""
    import streamlit as st

    user = st.session_state.get(SESSION_USER, "")
    if settings.auth == "password" and user and st.sidebar.button(f"Sign out ({user})", key="sign_out"):
        st.session_state.pop(SESSION_USER, None)
        st.rerun()
