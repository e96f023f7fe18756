"""Identity-Aware Proxy sign-in over HTTP: `histoxai app --auth iap` served on loopback, IAP's public keys
served by a stand-in of https://www.gstatic.com/iap/verify/public_key (HISTOXAI_IAP_CERTS_URL), real ES256
tokens in the X-Goog-IAP-JWT-Assertion header of each session's request: a valid one opens the app, every
kind of bad or missing one is refused with one message and nothing of the run shown."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.request

import pytest

from histoxai.app import auth
from histoxai.app.settings import ENV
from tests import app_browser
from tests.app_data import synthesise_run

AUDIENCE = "/projects/123456/locations/europe-west4/services/histoxai-app"
ISSUER = "https://cloud.google.com/iap"
SIGNED_IN = "Reload run"  # a button of the Main page, shown only when signed in
REJECTED = f"Signed out: {auth.IAP_HEADER}: rejected"


@pytest.fixture(scope="module")
def iap_app(tmp_path_factory):
    """The served app behind (a stand-in of) IAP: yields (url, IAP's signer, its public-key URL)."""
    run = synthesise_run(tmp_path_factory.mktemp("iap") / "run", patches=20, patch_size=32, map_size=8,
                         samples=2, shard_size=10)["run"]
    with app_browser.iap_keys("k1") as (signer, certs):
        env = {**{variable: "" for variable in ENV.values()}, ENV["iap_audience"]: AUDIENCE,
               ENV["iap_certs_url"]: certs}
        with app_browser.serve_app(run, None, args=("--auth", "iap"), env=env) as url:
            yield url, signer, certs


def claims(**changed) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "email": "accounts.google.com:r@example.org", "sub": "1",
            "iat": now - 5, "exp": now + 600, **changed}


def signed(signer, **changed) -> str:
    from google.auth import jwt

    return jwt.encode(signer, claims(**changed)).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, secret: bytes | None) -> str:
    """A token with any header: an HMAC-SHA256 signature with `secret`, or none."""
    body = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    signature = hmac.new(secret, body.encode(), hashlib.sha256).digest() if secret else b""
    return f"{body}.{b64(signature)}"


def session_sees(url: str, token: str | None) -> tuple[list[str], list[str]]:
    """(texts, alerts) of the first page a session opened with this header gets."""
    headers = {auth.IAP_HEADER: token} if token is not None else {}
    with app_browser.AppSession(url, headers=headers) as session:
        session.run()
        return session.texts(), session.alerts()


def test_a_valid_iap_assertion_opens_the_app(iap_app):
    url, signer, _ = iap_app
    texts, alerts = session_sees(url, signed(signer))
    assert SIGNED_IN in texts and alerts == []


def other_key_signer():
    """A key IAP never published, claiming IAP's key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from google.auth import crypt

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return crypt.ES256Signer.from_string(pem, key_id="k1")


# case -> (the token, given IAP's signer and key URL; the start of the one message shown)
REFUSED = {
    "missing": (lambda signer, certs: None,
                "Sign-in required: this app is served through Identity-Aware Proxy only."),
    "empty": (lambda signer, certs: "", "Sign-in required: "),
    "not-a-jwt": (lambda signer, certs: "not.a.jwt", f"{REJECTED} (Can't parse segment"),
    "another-key": (lambda signer, certs: signed(other_key_signer()),
                    f"{REJECTED} (Could not verify token signature"),
    "unknown-key-id": (lambda signer, certs: jwt_with_kid(signer, "k2"),
                       f"{REJECTED} (Certificate for key id k2 not found"),
    "wrong-audience": (lambda signer, certs: signed(signer, aud="/projects/1/global/backendServices/2"),
                       f"{REJECTED} (Token has wrong audience"),
    "expired": (lambda signer, certs: signed(signer, iat=int(time.time()) - 700, exp=int(time.time()) - 100),
                f"{REJECTED} (Token expired"),
    "expired-within-skew": (lambda signer, certs: signed(signer, exp=int(time.time()) - 5),
                            f"{REJECTED} (token expired at "),
    "issued-in-future": (lambda signer, certs: signed(signer, iat=int(time.time()) + 300),
                         f"{REJECTED} (Token used too early"),
    "wrong-issuer": (lambda signer, certs: signed(signer, iss="https://accounts.google.com"),
                     f"Signed out: {auth.IAP_HEADER}: not issued by IAP for a user (iss 'https://accounts"),
    "no-email": (lambda signer, certs: signed(signer, email=""),
                 f"Signed out: {auth.IAP_HEADER}: not issued by IAP for a user (no email claim"),
    "alg-none": (lambda signer, certs: unsigned({"alg": "none", "typ": "JWT", "kid": "k1"}, None),
                 f"Signed out: {auth.IAP_HEADER}: signed with 'none'; expected ES256"),
    # the published public key used as an HMAC secret (algorithm confusion)
    "hs256-with-public-key": (lambda signer, certs: unsigned(
        {"alg": "HS256", "typ": "JWT", "kid": "k1"}, public_key(certs)),
        f"Signed out: {auth.IAP_HEADER}: signed with 'HS256'; expected ES256"),
}


def jwt_with_kid(signer, kid: str) -> str:
    from google.auth import jwt

    return jwt.encode(signer, claims(), key_id=kid).decode()


def public_key(certs: str) -> bytes:
    with urllib.request.urlopen(certs, timeout=10) as response:
        return json.loads(response.read())["k1"].encode()


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_missing_or_bad_iap_assertion_is_refused(iap_app, case):
    url, signer, certs = iap_app
    make, message = REFUSED[case]
    texts, alerts = session_sees(url, make(signer, certs))
    assert len(alerts) == 1 and alerts[0].startswith(message), alerts
    assert SIGNED_IN not in texts and texts == alerts, "nothing but the refusal is shown"
