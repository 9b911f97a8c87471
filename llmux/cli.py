"""The ``llmux`` command: serve, check, fake-backend.

Usage::

    llmux serve -c conf/demo.yaml
    llmux check -c conf/demo.yaml
    llmux fake-backend --port 8001 --model llama

This module runs in gunicorn's master: it imports the app (flask, requests)
only inside the worker, through :class:`llmux.server.LlmuxServer`.
"""

from __future__ import annotations

import os
import sys

import click

from . import __version__
from .config import ConfigError, load_config
from .logs import FORMATS


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
    "--gunicorn-config",
    metavar="PATH",
    help="gunicorn settings file (default: ./gunicorn.conf.py when present)",
)
def serve(config_file, port, host, verbose, log_format, gunicorn_config):
    """Run llmux under gunicorn (gevent worker, one worker)."""
    from .server import LlmuxServer, config_path

    path = config_path(config_file)
    try:
        config = load_config(path, port=port)
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(1)
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
        click.echo(f"  {name}: backend http://127.0.0.1:{model.port}")
    p = config.policy
    click.echo(
        f"  policy {p.policy_type}: request_timeout_secs={p.request_timeout_secs}, "
        f"drain_before_switch={p.drain_before_switch}, min_active_secs={p.min_active_secs:g}"
    )


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
    argv = [sys.executable, "-m", "llmux.fake_backend", *ctx.args]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
