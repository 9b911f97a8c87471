"""The ``llmux`` command: serve, check, status, wake, sleep, reload, simulate, fake-backend.

Usage::

    llmux serve -c conf/demo.yaml
    llmux check -c conf/demo.yaml
    llmux status -c conf/demo.yaml          # or --url http://host:3000, --json
    llmux wake qwen; llmux sleep qwen; llmux reload
    llmux simulate trace.csv --switch-secs 10 --concurrency 16
    llmux fake-backend --port 8001 --model llama

This module runs in gunicorn's master: it imports the app (flask, requests)
only inside the worker, through :class:`llmux.ops.server.LlmuxServer`.
"""

from __future__ import annotations

import io
import json
import os
import sys
from urllib.parse import quote

import click

from .. import __version__
from ..config import ConfigError, load_config
from ..engine.residency import format_bytes
from ..telemetry.logs import FORMATS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmux")
def main() -> None:
    """OpenAI-compatible proxy that lets several local LLM servers share one GPU."""


def _config_option(f):
    return click.option(
        "-c",
        "--config",
        "config_file",
        metavar="PATH",
        help="config file (default: $LLMUX_CONFIG, else ./config.yaml)",
    )(f)


@main.command()
@_config_option
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="listen port (default: config)")
@click.option("--host", help="listen address (default: config, else 127.0.0.1)")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.option("--log-format", type=click.Choice(FORMATS), default="json", show_default=True)
@click.option(
    "--log-file",
    metavar="PATH",
    help="append logs to this file, reopened once logrotate renamed it (default: stderr)",
)
@click.option(
    "--gunicorn-config",
    metavar="PATH",
    help="gunicorn settings file (default: ./gunicorn.conf.py when present)",
)
def serve(config_file, port, host, verbose, log_format, log_file, gunicorn_config):
    """Run llmux under gunicorn (gevent worker, one worker)."""
    from .server import LlmuxServer, config_path

    path = config_path(config_file)
    try:
        config = load_config(path, port=port)
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(1)
    if log_file is not None:
        directory = os.path.dirname(os.path.abspath(log_file))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise click.UsageError(
                f"--log-file {log_file}: {directory} is not a writable directory"
            )
    if gunicorn_config is None and os.path.exists("gunicorn.conf.py"):
        gunicorn_config = "gunicorn.conf.py"
    elif gunicorn_config is not None and not os.path.exists(gunicorn_config):
        raise click.UsageError(f"gunicorn config {gunicorn_config} does not exist")
    LlmuxServer(
        path,
        host=host or config.host,
        port=config.port,
        port_override=port,
        gunicorn_config=gunicorn_config,
        log_format=log_format,
        log_file=log_file,
        verbose=verbose,
    ).run()


@main.command()
@_config_option
def check(config_file):
    """Validate a config file and say what it holds."""
    from .server import config_path

    path = config_path(config_file)
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(1)
    click.echo(f"{path}: ok: listens on {config.host}:{config.port}, {len(config.models)} models")
    for name in sorted(config.models):
        model = config.models[name]
        line = f"  {name}: backend http://127.0.0.1:{model.port}"
        if model.aliases:
            line += f", aliases {', '.join(model.aliases)}"
        if model.upstream_model:
            line += f", sent to the backend as {model.upstream_model}"
        if model.memory is not None:
            line += f", memory {format_bytes(model.memory)}"
            if model.memory_asleep:
                line += f" ({format_bytes(model.memory_asleep)} asleep)"
            if model.pin:
                line += ", pinned"
            if model.exclusive_with:
                line += f", never awake with {', '.join(model.exclusive_with)}"
        click.echo(line)
    mem = config.memory
    if mem.budget is None:
        click.echo("  memory: no budget, one model awake at a time")
    else:
        click.echo(
            f"  memory: budget {format_bytes(mem.budget)}, headroom {format_bytes(mem.headroom)}, "
            f"eviction {mem.eviction}, " + (f"probe: {mem.probe}" if mem.probe else "no probe")
        )
    p = config.policy
    click.echo(
        f"  policy {p.policy_type}: request_timeout_secs={p.request_timeout_secs}, "
        f"drain_before_switch={p.drain_before_switch}, min_active_secs={p.min_active_secs:g}"
        + (
            f", max_wait_secs={p.max_wait_secs:g}, quantum_factor={p.quantum_factor:g}"
            if p.policy_type == "cost_aware"
            else ""
        )
    )
    for warning in config.warnings():
        click.echo(f"  warning: {warning}")


def _admin_options(f):
    f = click.option("--json", "as_json", is_flag=True, help="print the JSON answer")(f)
    f = click.option(
        "--token",
        envvar="LLMUX_ADMIN_TOKEN",
        help="admin token (default: $LLMUX_ADMIN_TOKEN, else the config's admin.token)",
    )(f)
    f = click.option("--url", help="llmux to talk to (default: the config's host and port)")(f)
    return _config_option(f)


def _admin_client(config_file, url, token):
    from .admin_client import AdminClient
    from .server import config_path

    if url is None or token is None:
        path = config_path(config_file)
        try:
            config = load_config(path)
        except ConfigError as exc:
            if url is None:
                _print_problems(exc)
                raise click.ClickException("give --url, or a valid config with -c") from None
            config = None
        if config is not None:
            if url is None:
                host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
                url = f"http://{'[' + host + ']' if ':' in host else host}:{config.port}"
            token = token or config.admin.token
    return AdminClient(url, token)


def _admin_call(client, method, path, as_json, show, timeout=None):
    from .admin_client import AdminError

    try:
        answer = client.call(method, path, timeout=timeout)
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(answer, indent=2) if as_json else show(answer))


@main.command()
@_admin_options
def status(config_file, url, token, as_json):
    """Show what a running llmux has awake, queued and failing."""
    from .admin_client import format_status

    client = _admin_client(config_file, url, token)
    _admin_call(client, "GET", "/llmux/status", as_json, format_status)


@main.command()
@click.argument("model")
@_admin_options
def wake(model, config_file, url, token, as_json):
    """Wake MODEL (like a request for it would) and wait until it is awake."""
    _model_action("wake", model, config_file, url, token, as_json)


@main.command()
@click.argument("model")
@_admin_options
def sleep(model, config_file, url, token, as_json):
    """Drain MODEL and run its sleep hook."""
    _model_action("sleep", model, config_file, url, token, as_json)


def _model_action(action, model, config_file, url, token, as_json) -> None:
    client = _admin_client(config_file, url, token)
    path = f"/llmux/models/{quote(model, safe='')}/{action}"
    _admin_call(client, "POST", path, as_json, lambda a: f"{a['model']}: {a['state']}", 3600)


@main.command()
@_admin_options
def reload(config_file, url, token, as_json):
    """Make a running llmux re-read its config file (nothing changes if it is invalid)."""

    def show(a):
        parts = [f"{key}: {', '.join(a[key])}" for key in ("added", "removed", "changed") if a[key]]
        if a.get("settings_changed"):
            parts.append(f"settings changed: {', '.join(a['settings_changed'])}")
        if a["going_to_sleep"]:
            parts.append(f"going to sleep: {', '.join(a['going_to_sleep'])}")
        if a["needs_restart"]:
            parts.append(f"needs a restart to apply: {', '.join(a['needs_restart'])}")
        return f"{a['config']}: reloaded" + ("".join(f"\n  {p}" for p in parts) or ", no change")

    client = _admin_client(config_file, url, token)
    _admin_call(client, "POST", "/llmux/reload", as_json, show)


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        click.echo(f"{exc.path}: {problem}", err=True)


@main.command(
    "fake-backend",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def fake_backend(ctx):
    """A small OpenAI-compatible server for demos and tests (--help for options)."""
    # A fresh interpreter: the fake backend is its own gevent program.
    argv = [sys.executable, "-m", "llmux.demo.fake_backend", *ctx.args]
    os.execv(sys.executable, argv)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def simulate(ctx):
    """Compare scheduling policies on a trace, in simulated time (--help for options)."""
    # imported here: the engine stays out of gunicorn's master
    from ..sim.cli import simulate as command

    command.main(args=ctx.args, prog_name="llmux simulate")


@main.command()
@click.argument("logfiles", nargs=-1, metavar="[LOGFILE]...")
@click.option("--json", "as_json", is_flag=True, help="the whole story as JSON, for tools")
@click.option("--html", "html_file", metavar="FILE", help="also write a self-contained page")
@click.option("--requests", "list_requests", is_flag=True, help="list every request")
@click.option("--width", type=click.IntRange(20, 1000), default=72, show_default=True)
@click.option(
    "--since", metavar="TIME", help="show from TIME (ISO 8601; UTC unless it has an offset)"
)
@click.option(
    "--until", metavar="TIME", help="show until TIME (ISO 8601; UTC unless it has an offset)"
)
def timeline(logfiles, as_json, html_file, list_requests, width, since, until):
    """Rebuild what happened from llmux's JSON log lines.

    LOGFILE... are log files in any order (rotated ones, .gz included), or - for
    stdin (the default). Prints each model's states as a chart, every switch with
    its phases, every failed hook, the requests, and the gaps: lines lost, restarts,
    events missing.
    """
    from ..timeline.reading import read_logs
    from ..timeline.render import clock, html_page, plain, text
    from ..timeline.story import reconstruct

    window = [_utc_seconds(name, value) for name, value in (("since", since), ("until", until))]
    if None not in window and window[0] > window[1]:
        raise click.BadParameter("--since is later than --until", param_hint="--since")
    paths = logfiles or ["-"]
    stdin = None
    if "-" in paths:
        if sys.stdin.isatty():
            raise click.UsageError("give log files, or pipe the lines in (journalctl -o cat ...)")
        # bytes that are not UTF-8 (a .gz piped without zcat) are replaced, never a traceback
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    try:
        whole = reconstruct(read_logs(paths, stdin=stdin), *window)
    except OSError as exc:
        raise click.ClickException(f"cannot read {exc.filename}: {exc.strerror}") from None
    if whole.start is None:  # not one llmux JSON line: say why, never an empty chart
        why = "; ".join(plain(g.detail) for g in whole.gaps[:3]) or "the input is empty"
        raise click.ClickException(f"no llmux JSON log lines read ({why})")
    story = whole.window(*window) if since or until else whole
    if story.start is None:
        raise click.ClickException(
            f"no llmux log lines between {since or 'the start'} and {until or 'the end'}: "
            f"the log covers {clock(whole.start, True)} to {clock(whole.end, True)} UTC"
        )
    if html_file:
        try:
            with open(html_file, "w", encoding="utf-8") as f:
                f.write(html_page(story))
        except OSError as exc:
            raise click.ClickException(f"cannot write {html_file}: {exc.strerror}") from None
    if as_json:
        click.echo(json.dumps(story.as_dict(), indent=1))
    else:
        click.echo(text(story, width=width, requests=list_requests), nl=False)


def _utc_seconds(name: str, value: str | None) -> float | None:
    """``--since``/``--until`` as Unix seconds: ISO 8601, UTC when it names no offset."""
    if value is None:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time", param_hint=f"--{name}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


if __name__ == "__main__":
    main()
