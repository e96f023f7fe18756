"""Open the review web app on a run's outputs (local or gs://), behind a sign-in.

Starts Streamlit on the app (app/main.py): Main (the run's outputs, models, the Table 4.1
report, the trust report), Single Target (a grid of patches with one method's overlay), Multiple
Targets, Multiple Methods (one patch, side by side) and Sample Maps (measured, predicted and residual
maps; click a voxel for its patch). The run is any folder with pipeline outputs below it; the sidebar
(or ?run= in the URL) may switch to another folder under --root, never outside it.

Sign-in: with --auth password (default), user names and bcrypt hashes come from --users FILE (YAML,
local or gs://) or the variable HISTOXAI_APP_USERS holding that YAML (e.g. a mounted secret); make an
entry with --hash-password NAME. With --auth iap the app trusts only requests signed by Google's
Identity-Aware Proxy for the audience in HISTOXAI_IAP_AUDIENCE, checked again on every interaction.
Failed password sign-ins back off and lock per user name and client address (--sign-in-state shares them
between instances; --trusted-proxies says how far X-Forwarded-For can be believed). Every page is served
with headers that forbid framing.

The server listens on 127.0.0.1 unless --address says otherwise; on Cloud Run (K_SERVICE set) it
listens on 0.0.0.0.

Examples:
  histoxai app --hash-password alice >> users.yaml
  histoxai app --run outputs/demo --users users.yaml
  histoxai app --run gs://bucket/root/histoxai-20250101 --root gs://bucket/root --users gs://bucket/users.yaml
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

SERVER_SCRIPT = Path(__file__).with_name("asgi.py")  # Streamlit's server around main.py, with our headers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from histoxai.app.settings import AUTH_MODES, ENV

    parser.add_argument("--run", metavar="RUN_URI", help="run folder to open (local path or gs:// URI)")
    parser.add_argument("--root", default=os.environ.get(ENV["root"]) or None,
                        help="nothing outside this folder can be read through the app "
                             f"(default: ${ENV['root']}, else the run folder)")
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    parser.add_argument("--address", help="address to listen on (default 127.0.0.1; 0.0.0.0 on Cloud Run)")
    parser.add_argument("--users", metavar="FILE",
                        help="YAML of user name -> bcrypt hash, local or gs:// "
                             f"(default: ${ENV['users_file']}, else the YAML in ${ENV['users_yaml']})")
    parser.add_argument("--auth", choices=AUTH_MODES, default=os.environ.get(ENV["auth"]) or "password",
                        help="password (default) or iap (behind Identity-Aware Proxy)")
    parser.add_argument("--sign-in-state", metavar="URI", default=os.environ.get(ENV["sign_in_state"], ""),
                        help="file (local or gs://) where instances share failed sign-ins (default: "
                             f"${ENV['sign_in_state']}, else the users file + .sign-in.json; 'none': this "
                             "process only)")
    parser.add_argument("--trusted-proxies", metavar="N",
                        default=os.environ.get(ENV["trusted_proxies"]) or "0",
                        help="proxies in front of the app that append the client address to X-Forwarded-For "
                             f"(default: ${ENV['trusted_proxies']}, else 0: the header is ignored)")
    parser.add_argument("--hash-password", metavar="NAME", help="print a users-file line for NAME (the "
                                                                "password is asked for, or read from stdin) "
                                                                "and exit")


def _read_password() -> str:
    from histoxai.errors import InputError

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise InputError("--hash-password: the two passwords differ")
    return first


def run(args: argparse.Namespace) -> None:
    from histoxai import storage
    from histoxai.app import auth, runs
    from histoxai.app.settings import ENV, AppSettings, whole_number
    from histoxai.errors import InputError

    if args.hash_password:
        name = args.hash_password.strip()
        if not name or ":" in name:
            raise InputError(f"--hash-password {args.hash_password!r}: expected a user name without ':'")
        print(f"{name}: '{auth.hash_password(_read_password())}'")
        return
    if not args.run:
        raise InputError("--run: missing; expected the run folder to open (local path or gs:// URI)")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected 1 to 65535")
    run_uri = args.run if storage.is_gcs(args.run) else str(Path(args.run).resolve())
    root = args.root or run_uri
    root = root if storage.is_gcs(root) else str(Path(root).resolve())
    runs.resolve_run(root, run_uri)
    if not storage.exists(run_uri):
        raise InputError(f"--run {args.run}: not found; expected a folder with pipeline outputs")
    settings = AppSettings(
        run=run_uri, root=root, auth=args.auth,
        users_file=args.users or os.environ.get(ENV["users_file"], ""),
        users_yaml=os.environ.get(ENV["users_yaml"], ""),
        iap_audience=os.environ.get(ENV["iap_audience"], ""),
        iap_certs_url=os.environ.get(ENV["iap_certs_url"]) or AppSettings.iap_certs_url,
        sign_in_state=args.sign_in_state,
        trusted_proxies=whole_number(args.trusted_proxies, "--trusted-proxies"))
    if settings.auth == "password":
        auth.load_users(settings)  # a bad users file fails here, not at the first sign-in
    address = args.address or ("0.0.0.0" if os.environ.get("K_SERVICE") else "127.0.0.1")
    command = [sys.executable, "-m", "streamlit", "run", str(SERVER_SCRIPT),
               "--server.port", str(args.port), "--server.address", address,
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer"]
    print(f"histoxai app: http://{address}:{args.port} (run {run_uri}; root {root}; sign-in {settings.auth})",
          flush=True)
    # replace this process: Streamlit gets the signals (Cloud Run's SIGTERM) directly
    inherited = {k: v for k, v in os.environ.items() if k not in ENV.values()}
    # X-Forwarded-For is believed only as --trusted-proxies says: uvicorn (Streamlit's server) would otherwise
    # take a client address from it on every connection from loopback
    os.execve(sys.executable, command, {**inherited, **settings.to_env(), "FORWARDED_ALLOW_IPS": ""})
