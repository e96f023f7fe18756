"""The model registry by hand: list models and versions, show one, promote, roll back, fetch.

REGISTRY is a folder (local or gs://) or vertex://PROJECT/REGION. A version is NAME@N or NAME@ALIAS
(NAME alone: the champion). `promote` and `rollback` move the champion alias (and the default
version) and record who moved it and why; `rollback` returns to the newest earlier version that was
the champion once. `fetch` writes a version's files and champion.json, as the pipeline's champion
step does.

Examples:
  histoxai models list --registry outputs/demo/registry
  histoxai models show histoxai-multitask@champion --registry gs://bucket/registry
  histoxai models promote histoxai-multitask@3 --registry vertex://my-project/europe-west4 --reason "review"
  histoxai models rollback histoxai-multitask --registry outputs/demo/registry --reason "bad maps"
"""

from __future__ import annotations

import argparse
import json

ACTIONS = ("list", "show", "promote", "rollback", "fetch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="what to do")
    parser.add_argument("model", nargs="?", metavar="NAME[@VERSION]",
                        help="a model, or one version of it (N or an alias such as champion)")
    parser.add_argument("--registry", required=True, help="a folder (local or gs://) or vertex://PROJECT/REGION")
    parser.add_argument("--reason", default="", help="promote, rollback: why (recorded with the change)")
    parser.add_argument("--out", help="fetch: the folder to write the version's files to")
    parser.add_argument("--overwrite", action="store_true", help="fetch: replace an existing --out")
    parser.add_argument("--json", action="store_true", help="list, show: print JSON")


def _line(version) -> str:
    record = version.record
    aliases = f" [{', '.join(version.aliases)}]" if version.aliases else ""
    scores = record.get("scores") or {}
    score = "" if scores.get("challenger") is None else f", score {scores['challenger']:.3f}"
    samples = version.labels.get("training-samples", "?")
    return (f"  {version.version}{aliases}  {version.created}  trained on {samples}  "
            f"{record.get('verdict', '?')}{score}  run {record.get('run') or '-'}")


def run(args: argparse.Namespace) -> None:
    from histoxai.errors import InputError
    from histoxai.model_registry import open_registry, parse_reference

    registry = open_registry(args.registry)
    if args.action == "list" and not args.model:
        names = registry.names()
        listing = {name: [v.as_dict() for v in registry.versions(name)] for name in names}
        if args.json:
            print(json.dumps(listing, indent=1))
            return
        for name in names:
            print(name)
            for version in registry.versions(name):
                print(_line(version))
        if not names:
            print(f"{registry.location}: no models registered")
        return
    if not args.model:
        raise InputError(f"histoxai models {args.action}: expected a model, NAME or NAME@VERSION")
    name, which = parse_reference(args.model)
    if args.action == "list":
        versions = registry.versions(name)
        print(json.dumps([v.as_dict() for v in versions], indent=1) if args.json
              else "\n".join([name, *map(_line, versions)]))
    elif args.action == "show":
        version = registry.get(name, which or "champion")
        print(json.dumps(version.as_dict(), indent=1))
    elif args.action == "promote":
        if which is None:
            raise InputError(f"histoxai models promote {args.model}: expected NAME@VERSION")
        number = registry.get(name, which).version
        version = registry.set_champion(name, number, reason=args.reason or "by hand")
        print(f"{name}: the champion is version {version.version}")
    elif args.action == "rollback":
        version = registry.rollback(name, reason=args.reason or "rollback")
        print(f"{name}: rolled back; the champion is version {version.version}")
    else:
        from histoxai.components.register.register import fetch_champion

        if not args.out:
            raise InputError("histoxai models fetch: --out is required (the folder to write the files to)")
        info = fetch_champion(args.registry, name, args.out, which=which, overwrite=args.overwrite)
        found = f"version {info['version']}" if info["version"] else "no champion (champion.json only)"
        print(f"wrote {args.out}: {name} {found}")
