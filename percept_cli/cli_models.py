"""`percept models ...`: list, pull, verify, info and lock the models named in weights.lock.

Thin commands over percept_cli.hub. Results go to stdout (a rich table, or one JSON object with
--json); progress and hints go to stderr. Failures raise percept errors; main() maps them to exit codes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from percept_cli import hub
from percept_cli import lock as lockfile
from percept_cli.errors import ChecksumError

app = typer.Typer(help="Model weights: weights.lock, the Hugging Face cache, offline use.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
NameArg = Annotated[str, typer.Argument(help="A model name from weights.lock.", show_default=False)]


def _emit(obj: dict[str, Any]) -> None:
    """Print one JSON object on stdout."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def _say(msg: str) -> None:
    """A message for people, on stderr."""
    typer.echo(msg, err=True)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _file_json(f: lockfile.LockFile, path: Path | None) -> dict[str, Any]:
    """A lock file and where it is on this machine."""
    return {**f.as_dict(), "pinned": f.pinned, "cache_path": str(path) if path else None}


def _params(n: int) -> str:
    """A parameter count as "2.76 B" / "31.5 M"; "?" when unknown."""
    if n <= 0:
        return "?"
    return f"{n / 1e9:.3g} B" if n >= 1e9 else f"{n / 1e6:.3g} M"


@app.command("list")
def list_models(json_out: JsonOpt = False) -> None:
    """List the models of weights.lock: tasks, size, whether cached and pinned."""
    lock = lockfile.load_lock()
    rows = []
    for entry in lock.models.values():
        state = hub.cache_state(entry)
        have = sum(p is not None for _, p in state)
        rows.append({"name": entry.name, "default": entry.name == lock.default, "description": entry.description,
                     "tasks": list(entry.tasks), "parameters": entry.parameters, "layout": entry.layout,
                     "builtin": entry.builtin, "download_size": entry.download_size, "files": len(entry.files),
                     "cached_files": have, "cached": bool(state) and have == len(state), "pinned": entry.pinned})
    if json_out:
        _emit({"lock": str(lock.path), "default": lock.default, "models": rows})
        return
    _table(f"models in {lock.path}", ["name", "tasks", "parameters", "download", "cached", "pinned"], [
        [r["name"] + (" (default)" if r["default"] else ""), ",".join(r["tasks"]), _params(r["parameters"]),
         "builtin" if r["builtin"] else hub.human_size(r["download_size"]),
         "yes" if r["cached"] else (f"{r['cached_files']}/{r['files']}" if r["cached_files"] else "no"),
         "yes" if r["pinned"] else "no"] for r in rows])


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="A name from weights.lock, or hf://REPO@COMMIT/PATH.",
                                        show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Download and verify a model; an unpinned entry follows `main` and prints what to lock."""
    fetched = hub.pull_model(name, force=force)
    unpinned = False
    if not name.startswith("hf://"):
        unpinned = not lockfile.load_lock().entry(name).pinned
    for f, path in fetched:
        _say(f"{f.role or 'file'}: {f.repo + '@' + f.revision + ' ' if f.repo else ''}{f.path}  "
             f"size {f.size}  sha256 {f.sha256}")
    if unpinned:
        _say(f"weights.lock does not pin '{name}' yet: check the above, then run `percept models lock {name}`")
    if json_out:
        _emit({"name": name, "lock_pinned": not unpinned, "files": [_file_json(f, p) for f, p in fetched]})
    else:
        _say(f"{name}: {len(fetched)} files cached and verified")


@app.command()
def verify(
    name: Annotated[Optional[str], typer.Argument(help="A model name (default: all).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-hash the cached files of one model (or all) against weights.lock; exit 1 on a mismatch."""
    results = hub.verify_models(name)
    if json_out:
        _emit({"ok": all(c.status != "mismatch" for cs in results.values() for c in cs), "models": {
            model: [{**_file_json(c.file, c.path), "status": c.status, "actual_size": c.size,
                     "actual_sha256": c.sha256 or None} for c in checks] for model, checks in results.items()}})
    else:
        _table("verify", ["model", "file", "status", "sha256"], [
            [model, c.file.path, c.status, c.sha256 or "-"] for model, checks in results.items() for c in checks])
    bad = [(model, c) for model, checks in results.items() for c in checks if c.status == "mismatch"]
    if bad:
        model, c = bad[0]
        more = f" ({len(bad)} bad files)" if len(bad) > 1 else ""
        raise ChecksumError(f"{c.path} (model '{model}', {c.file.path}) has sha256 {c.sha256} and {c.size} bytes, "
                            f"weights.lock expects {c.file.sha256 or '?'} and {c.file.size or '?'}: run "
                            f"`percept models pull {model} --force`{more}")


@app.command()
def info(name: NameArg, json_out: JsonOpt = False) -> None:
    """Show every weights.lock field of a model and where its files are cached."""
    lock = lockfile.load_lock()
    entry = lock.entry(name)
    state = hub.cache_state(entry)
    obj = {"name": entry.name, "lock": str(lock.path), "default": entry.name == lock.default,
           "description": entry.description, "tasks": list(entry.tasks), "parameters": entry.parameters,
           "layout": entry.layout, "builtin": entry.builtin, "folder": entry.folder or None, "config": entry.config,
           "pinned": entry.pinned, "download_size": entry.download_size,
           "hub_cache": None if entry.builtin else str(hub.hub_cache_dir()),
           "files": [_file_json(f, p) for f, p in state]}
    if json_out:
        _emit(obj)
        return
    for key, value in obj.items():
        if key not in ("files", "config"):
            typer.echo(f"{key}: {value}")
    typer.echo(f"config: {json.dumps(entry.config)}")
    _table("files", ["role", "repo@revision", "path", "size", "sha256", "cached at"], [
        [f["role"], (f"{f['repo']}@{f['revision'] or '(unpinned)'}" if f["repo"] else "builtin"), f["path"],
         str(f["size"] or "?"), f["sha256"] or "?", f["cache_path"] or "-"] for f in obj["files"]])


@app.command()
def lock(name: NameArg, json_out: JsonOpt = False) -> None:
    """Write a model's commits, sizes and sha256 into weights.lock (builtin: re-hash the package folder)."""
    path = lockfile.load_lock().path
    files = hub.lock_model(name)
    _say(f"wrote {len(files)} files of '{name}' into {Path(path).resolve()}")
    if json_out:
        _emit({"name": name, "lock": str(Path(path).resolve()), "files": [f.as_dict() for f in files]})
