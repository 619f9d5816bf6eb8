"""`percept models ...`: list, pull (--pin), verify, info and lock the models named in weights.lock.

Thin commands over percept_cli.hub. Results go to stdout (a table, never cut when piped, or one JSON
object with --json); progress and hints go to stderr. Failures raise percept errors; main() maps them to exit codes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from percept_cli import hub
from percept_cli import lock as lockfile
from percept_cli.errors import ChecksumError

app = typer.Typer(help="Model weights: weights.lock, the Hugging Face cache, offline use.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
NameArg = Annotated[str, typer.Argument(help="A model name from weights.lock.", show_default=False)]


def _out(obj: dict[str, Any], json_out: bool, title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """One JSON object, or a rich table that keeps its natural width when stdout is not a terminal."""
    if json_out:
        return typer.echo(json.dumps(obj, indent=2, default=str))
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title, title_justify="left")
    for r in rows:
        table.add_row(*map(str, r))
    Console(width=None if sys.stdout.isatty() else 100_000).print(table)


def _entry(e: lockfile.LockEntry, lock: lockfile.Lock) -> dict[str, Any]:
    """A model's lock fields, which lock pinned it, and its files with where they are cached."""
    return {"name": e.name, "lock": str(e.source), "default": e.name == lock.default, "description": e.description,
            "tasks": list(e.tasks), "parameters": e.parameters, "layout": e.layout, "builtin": e.builtin,
            "pinned": e.pinned, "download_size": e.download_size,
            "files": [hub.file_row(f, hub.cached_file(f)) for f in e.files]}


@app.command("list")
def list_models(json_out: JsonOpt = False) -> None:
    """List the models: tasks, size, whether cached and pinned, and which lock pinned them."""
    lock = lockfile.load_lock()
    rows = [_entry(e, lock) for e in lock.models.values()]
    for r in rows:
        r["files"], r["cached_files"] = len(r["files"]), sum(bool(f["cache_path"]) for f in r["files"])
        r["cached"] = r["files"] > 0 and r["cached_files"] == r["files"]
    _out({"lock": str(lock.path), "user_lock": str(lockfile.user_lock_path()), "default": lock.default,
          "models": rows}, json_out, f"models in {lock.path}" + (f" and {lock.user}" if lock.user else ""),
         ["name", "tasks", "parameters", "download", "cached", "pinned by"], [
        [r["name"] + " (default)" * r["default"], ",".join(r["tasks"]),
         "?" if r["parameters"] <= 0 else f"{r['parameters'] / 1e9:.3g} B" if r["parameters"] >= 1e9
         else f"{r['parameters'] / 1e6:.3g} M", "builtin" if r["builtin"] else hub.human_size(r["download_size"]),
         "yes" if r["cached"] else f"{r['cached_files']}/{r['files']}" if r["cached_files"] else "no",
         r["lock"] if r["pinned"] else "no (unpinned)"] for r in rows])


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="A name from weights.lock, or hf://REPO@COMMIT/PATH.",
                                        show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
    pin: Annotated[bool, typer.Option("--pin", help="Pin an unpinned model at the repo's current commit into "
                                      "your user lock ($PERCEPT_LOCK), trusting what the Hub serves now.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Download and verify a model (--pin: pin an unpinned one first, trust on first use)."""
    entry = None if name.startswith("hf://") else lockfile.load_lock().entry(name)
    fetched = hub.pull_model(name, force=force, pin=pin)
    for f, _ in fetched:
        typer.echo(f"{f.role}: {f.repo + '@' + f.revision + ' ' if f.repo else ''}{f.path}  size {f.size}  "
                   f"sha256 {f.sha256}", err=True)
    pinned = pin and entry is not None and not entry.builtin and not entry.pinned  # else pull_model named --pin
    where = lockfile.user_lock_path() if pinned else entry.source if entry else None
    typer.echo(f"wrote these into {where}; delete '{name}' there to pin it again" if pinned else
               f"{name}: {len(fetched)} files cached and verified", err=True)
    if json_out:
        typer.echo(json.dumps({"name": name, "pinned_by": str(where) if where else None,
                               "files": [hub.file_row(f, p) for f, p in fetched]}, indent=2))


@app.command()
def verify(
    name: Annotated[Optional[str], typer.Argument(help="A model name (default: all).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-hash the cached files of one model (or all) against the lock; exit 1 on a mismatch."""
    results = hub.verify_models(name)
    bad = [c["error"] for checks in results.values() for c in checks if c["error"]]
    _out({"ok": not bad, "models": results}, json_out, "verify", ["model", "file", "status", "sha256"],
         [[model, c["path"], c["status"], c["actual_sha256"] or "-"] for model, checks in results.items() for c in checks])
    if bad:
        raise ChecksumError(bad[0] + (f" ({len(bad)} bad files)" if len(bad) > 1 else ""))


@app.command()
def info(name: NameArg, json_out: JsonOpt = False) -> None:
    """Show every lock field of a model, which lock pinned it, and where its files are cached."""
    lock = lockfile.load_lock()
    entry = lock.entry(name)
    obj = {**_entry(entry, lock), "folder": entry.folder or None, "config": entry.config,
           "hub_cache": None if entry.builtin else str(hub.hub_cache_dir())}
    for key, value in ({} if json_out else obj).items():
        if key != "files":
            typer.echo(f"{key}: {json.dumps(value) if key == 'config' else value}")
    _out(obj, json_out, "files", ["role", "repo@revision", "path", "size", "sha256", "cached at"], [
        [f["role"], f"{f['repo']}@{f['revision'] or '(unpinned)'}" if f["repo"] else "builtin", f["path"],
         f["size"] or "?", f["sha256"] or "?", f["cache_path"] or "-"] for f in obj["files"]])


@app.command()
def lock(name: NameArg, json_out: JsonOpt = False) -> None:
    """For maintainers: pin a model in the lock in use (builtin: re-hash the package folder). Users: pull --pin."""
    path = Path(lockfile.load_lock().path).resolve()
    files = hub.lock_model(name)
    typer.echo(f"wrote {len(files)} files of '{name}' into {path}", err=True)
    if json_out:
        typer.echo(json.dumps({"name": name, "lock": str(path), "files": [asdict(f) for f in files]}, indent=2))
