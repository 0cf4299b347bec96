"""The operator's `rag` commands: keys, plan, doctor, maintain, backup, restore, models, report.

Registered on the `rag` group by rag.cli.main; heavy modules are imported inside each command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from rag.cli.kit import cli_settings, emit_json, handle_errors, printable, say


@click.group()
def keys() -> None:
    """Manage API keys; with at least one key, every API call must carry one."""


@keys.command("add")
@click.argument("name")
@click.option(
    "--collection",
    "-c",
    "collections",
    multiple=True,
    required=True,
    help="A collection the key may read; repeat for more, '*' for all.",
)
@click.pass_context
@handle_errors
def keys_add(ctx: click.Context, name: str, collections: tuple[str, ...]) -> None:
    """Create key NAME and print it once (only its hash is stored)."""
    from rag.accounts.apikeys import add_key

    token = add_key(cli_settings(ctx).storage.data_path, name, list(collections))
    click.echo(token)
    shown = printable(f"key {name!r} created for {', '.join(collections)}")
    click.echo(f"{shown}; it is shown only now", err=True)


@keys.command("list")
@click.pass_context
@handle_errors
def keys_list(ctx: click.Context) -> None:
    """List the keys' names and collections (never the keys themselves)."""
    from rag.accounts.apikeys import load_keys

    for key in load_keys(cli_settings(ctx).storage.data_path):
        click.echo(printable(key.name) + "\t" + printable(",".join(key.collections)))


@keys.command("rm")
@click.argument("name")
@click.pass_context
@handle_errors
def keys_rm(ctx: click.Context, name: str) -> None:
    """Remove key NAME; requests with it are refused from then on."""
    from rag.accounts.apikeys import remove_key

    remove_key(cli_settings(ctx).storage.data_path, name)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--memory-gb",
    type=click.FloatRange(min=0, min_open=True),
    help="Plan for a machine with this much memory (GB as sold: 16 means 16 GiB).",
)
@click.option("--chip", help='Plan for this chip, e.g. "M4 Max"; Apple chips plan for Metal.')
@click.option(
    "--kv-bits",
    type=click.Choice(["8", "4"]),
    help="Plan the catalog with a quantized KV cache (what-if; serving keeps it unquantized).",
)
@click.option(
    "--measure",
    is_flag=True,
    help="Measure this machine's speed again (a few seconds) instead of using the kept figure.",
)
@click.pass_context
@handle_errors
def plan(
    ctx: click.Context,
    as_json: bool,
    memory_gb: float | None,
    chip: str | None,
    kv_bits: str | None,
    measure: bool,
) -> None:
    """Show how models fit this machine: budget, best model, context, concurrency, speed.

    Speed (time to first token, tokens/s) is predicted from this machine's speed, measured
    once by a short probe and kept, and set against the recent answers' measured speed.
    --memory-gb and --chip describe another machine; the [hardware] overrides in the
    config apply to this one only.
    """
    from rag.accounts.usage import UsageLedger, recent_speeds
    from rag.llm.sizing import render_sizing, size_machine

    settings = cli_settings(ctx)
    sizing = size_machine(
        settings,
        memory_gb,
        chip,
        int(kv_bits) if kv_bits else None,
        measure=measure,
        measured=recent_speeds(UsageLedger(settings.storage.data_path).read()),
    )
    if as_json:
        emit_json(sizing.to_json())
    else:
        click.echo(render_sizing(sizing))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
@handle_errors
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check this install: packages, MLX backend, memory, models, disk, index and port.

    Each check is ok, warn or fail, with its evidence and a fix; exit code 1 when any fails.
    See docs/troubleshooting.md.
    """
    from rag.ops.check import checks_to_json, render_checks
    from rag.ops.doctor import run_checks

    checks = run_checks(cli_settings(ctx))
    report = checks_to_json(checks)
    if as_json:
        emit_json(report)
    else:
        click.echo(render_checks(checks))
    sys.exit(0 if report["ok"] else 1)


@click.command()
@click.option("--now", is_flag=True, help="Run even if maintenance.interval_h has not passed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@handle_errors
def maintain(ctx: click.Context, now: bool, as_json: bool) -> None:
    """Compact the index and delete versions older than storage.keep_versions_s.

    Runs only when maintenance.interval_h has passed since the last run, so cron or launchd
    may call it often. With storage.keep_versions_s = 0 it erases: no file keeps the text
    of removed documents. Deletes the kept originals no document refers to. Reports what it
    reclaimed.
    """
    from rag.models.hardware import format_bytes
    from rag.ops.maintenance import run_maintenance

    report = run_maintenance(cli_settings(ctx), force=now, on_wait=say)
    if as_json:
        emit_json(report.to_json())
        return
    if report.reason == "no index":
        click.echo("nothing to maintain: no index yet")
    elif not report.ran:
        when = "never" if report.next_due_s is None else f"in {report.next_due_s / 3600:.1f}h"
        click.echo(f"not due (next run {when}, maintenance.interval_h); --now runs it anyway")
    else:
        click.echo(
            f"{report.versions_before} -> {report.versions_after} versions, "
            f"{report.fragments_before} -> {report.fragments_after} fragments, "
            f"{format_bytes(report.bytes_before)} -> {format_bytes(report.bytes_after)} "
            f"({format_bytes(report.bytes_reclaimed)} reclaimed), {report.rows} chunks, "
            f"in {report.seconds:.1f}s"
        )
        click.echo(
            f"originals: {format_bytes(report.originals_bytes)} kept, "
            f"{report.originals_removed} no document refers to deleted"
        )
        if report.erase:
            how = "; rewrote the table without them" if report.rewrote else ""
            click.echo(f"erased: no older version or deleted row is left on disk{how}")


@click.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the backup's manifest as JSON.")
@click.pass_context
@handle_errors
def backup(ctx: click.Context, dest: Path, as_json: bool) -> None:
    """Copy the index, API keys and config file into the new directory DEST.

    Safe while `rag serve` and `rag ingest` run: it copies the last committed version, never
    a half-written one. `rag restore DEST` puts it back.
    """
    from rag.config import config_file
    from rag.index.location import index_location
    from rag.ops.backup import create_backup

    settings = cli_settings(ctx)
    manifest = create_backup(
        settings.storage.data_path,
        dest,
        config_file(ctx.obj.get("config_path")),
        say,
        index_location(settings.storage),
    )
    if as_json:
        emit_json(manifest)
        return
    click.echo(
        f"backed up table {manifest['table']} version {manifest['table_version']} "
        f"({manifest['rows']} chunks) to {printable(str(manifest['dest']))} in "
        f"{manifest['seconds']:.1f}s"
    )


@click.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a data dir that already holds data.")
@click.option("--json", "as_json", is_flag=True, help="Print what was restored as JSON.")
@click.pass_context
@handle_errors
def restore(ctx: click.Context, src: Path, force: bool, as_json: bool) -> None:
    """Put the backup SRC (from `rag backup`) in place as storage.data_dir.

    Checks the backup against its manifest first, and swaps it in whole. Refuses a data dir
    that holds anything unless --force; stop `rag serve` and ingests before restoring.
    """
    from rag.errors import ConfigError
    from rag.ops.backup import restore_backup

    settings = cli_settings(ctx)
    if settings.storage.remote:
        raise ConfigError(
            f"rag restore writes a local data dir, and storage.uri = {settings.storage.uri!r} "
            "puts the index in an object store: restore with RAG_STORAGE_URI= (empty) into "
            "a local data dir, then re-ingest into the bucket or use the bucket's versioning"
        )
    result = restore_backup(
        src, settings.storage.data_path, force, settings.storage.lock_wait_s, say
    )
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"restored table {result['table']} ({result['rows']} chunks, backed up "
        f"{result['created']}) into {printable(str(result['restored_to']))}"
    )
    if result["config_copy"]:
        click.echo(
            f"the backup's config file is {printable(str(result['config_copy']))}; use it (or "
            "check yours "
            "with `rag doctor`) if this machine should embed the same way",
            err=True,
        )


@click.group()
def models() -> None:
    """Model files: the packaged models, and conversion for other engines."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
@handle_errors
def models_list(ctx: click.Context, as_json: bool) -> None:
    """The packaged models llm.model can name, installed or not, and those pulled from the hub.

    A model split across packages is joined into llm.cache_dir on first use; until then
    its path is where it will be. A pulled model (rag models pull) is named by its repo id
    (a directory) or its .gguf path.
    """
    from rag.models.packaged import PACKAGED_MODELS
    from rag.ops.pull import pulled_models

    cache_dir = cli_settings(ctx).llm.cache_path
    rows: list[dict[str, Any]] = []
    for model in PACKAGED_MODELS:
        installed = model.installed()
        path = model.joined_path(cache_dir) if installed else None
        rows.append(
            {
                "name": model.name,
                "aliases": list(model.aliases),
                "installed": installed,
                "size_bytes": model.size_bytes,
                "path": str(path) if path else None,
                "ready": model.ready(cache_dir),
                "packages": len(model.parts),
                "description": model.description,
                "source": "packaged",
            }
        )
    for pulled in pulled_models():
        rows.append(
            {
                "name": pulled["model"],
                "aliases": [],
                "installed": True,
                "size_bytes": pulled["size_bytes"],
                "path": pulled["path"],
                "ready": True,
                "packages": 0,
                "description": f"pulled from the hub: {pulled['name']}",
                "source": "hub",
                "repo_id": pulled["name"],
            }
        )
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        if row["source"] == "hub":
            size = f"{row['size_bytes'] / 1e9:.2f} GB"
            click.echo(f"{row['repo_id']:<28} {size:>8}  pulled; llm.model = {row['name']}")
            continue
        names = ", ".join([row["name"], *row["aliases"]])
        size = f"{row['size_bytes'] / 1e9:.2f} GB"
        if not row["installed"]:
            state = "not installed"
        elif row["ready"]:
            state = row["path"]
        else:
            state = f"installed; joined on first use into {row['path']}"
        click.echo(f"{names:<28} {size:>8}  {state}")


@models.command("pull")
@click.argument("name", default="auto")
@click.option("--set", "set_model", is_flag=True, help="Write llm.model into the config file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@handle_errors
def models_pull(ctx: click.Context, name: str, set_model: bool, as_json: bool) -> None:
    """Fetch a model from the Hugging Face hub into the local hub cache (HF_HUB_CACHE).

    NAME: `auto` (the default: the catalog model `auto` would pick for this machine), a
    catalog model (mlx-community/Qwen2.5-1.5B-Instruct-4bit) or any hub repo id. Fetched in
    the format this machine's engine runs: an MLX directory where MLX has a GPU, else one
    GGUF file for llama.cpp. The free disk is checked first, a broken download continues
    where it stopped, and every file is checked against the hub's hashes. A model already
    here is left as it is. --set writes llm.model into the config file.
    """
    from rag.ops.pull import choose_target, pull, set_config_model

    settings = cli_settings(ctx)
    target = choose_target(name, settings)
    say(f"pulling {target.repo_id} ({'GGUF' if target.gguf else 'MLX'}): {target.reason}")
    done = pull(target, progress=lambda line: say(f"fetching {line}"))
    result = done.to_json()
    if set_model:
        result["config"] = str(set_config_model(done.model))
    if as_json:
        emit_json(result)
        return
    state = "already here" if done.already_here else f"fetched {done.fetched_bytes / 1e6:.1f} MB"
    click.echo(f"{done.repo_id}: {state} ({done.size_bytes / 1e6:.1f} MB in {done.snapshot})")
    if set_model:
        click.echo(f"llm.model = {done.model!r} written to {result['config']}")
        if os.environ.get("RAG_LLM_MODEL"):
            say("RAG_LLM_MODEL is set in the environment and overrides the config file")
    else:
        click.echo(f'to use it: [llm] model = "{done.model}" (or rag models pull --set)')


@models.command("convert")
@click.argument("source")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--bits",
    type=click.Choice(["4", "8"]),
    default="4",
    show_default=True,
    help="Quantization of a Hugging Face source (a GGUF keeps its own).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@handle_errors
def models_convert(
    ctx: click.Context, source: str, directory: Path, bits: str, as_json: bool
) -> None:
    """Write an MLX model directory DIRECTORY from SOURCE.

    SOURCE: a packaged model ("bundled", "qwen2.5-coder-1.5b": rag models list), a .gguf
    file (Q4_0, Q4_1, Q8_0, Q4_K_M, Q4_K_S, Q6_K, F16 or F32; Q4_K layers are kept
    exactly as 4-bit, Q6_K ones become 8-bit) or a Hugging Face model directory (quantized
    with mlx_lm). mlx_lm and mlx_lm.server load the result (`mlx_lm.server --model
    DIRECTORY`), and so does llm.model.
    """
    from rag.llm.convert import convert_model

    cache_dir = cli_settings(ctx).llm.cache_path
    done = convert_model(source, directory, bits=int(bits), cache_dir=cache_dir)
    result = {
        "source": done.source,
        "directory": str(done.directory),
        "bits": done.bits,
        "weight_bytes": done.weight_bytes,
        "method": done.method,
    }
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"wrote {done.directory} ({done.weight_bytes / 1e6:.0f} MB of weights, "
            f"{done.bits or 'unquantized'}-bit) from {done.source}"
        )


@click.group()
def report() -> None:
    """Reports from what the service recorded."""


@report.command("cost")
@click.option("--since", help="From this long ago (12h, 7d, 2w) or this date (2026-11-01).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@handle_errors
def report_cost(ctx: click.Context, since: str | None, as_json: bool) -> None:
    """Cost of the answers `rag serve` gave, per API key and per collection.

    Each answer is charged the machine's cost (settings [cost]: hardware write-off and
    power) for the seconds it kept the model generating, and set against what the same
    tokens cost at the configured cloud price.
    """
    from rag.accounts.cost import parse_since, render_report, tally
    from rag.accounts.usage import UsageLedger

    settings = cli_settings(ctx)
    since_s = parse_since(since)
    result = tally(UsageLedger(settings.storage.data_path).read(since_s), since_s)
    as_dict = result.to_json(settings.cost)
    if as_json:
        emit_json(as_dict)
    else:
        click.echo(render_report(as_dict))
