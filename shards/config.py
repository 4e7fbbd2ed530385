"""Server settings from flags, environment variables and a configuration file.

`server_options` decorates a ``fastctx serve`` command so that every one of its options can be
given four ways, first found wins:

1. the flag itself (``--max-concurrent 32``);
2. an environment variable ``FASTCTX_<FLAG>`` (``FASTCTX_MAX_CONCURRENT=32``; a repeatable flag
   takes several values separated by spaces; a switch takes 1/0, true/false, yes/no);
3. a key of the file given by ``--config FILE`` (or ``FASTCTX_CONFIG``): TOML (``.toml``, and
   any other name) or JSON (``.json``), one flat table whose keys are flag names without the
   dashes (``max-concurrent = 32``; ``max_concurrent`` is accepted too; relative paths are
   relative to the file);
4. the default.

Unknown keys in the file and bad values from any source are errors naming the key (or
variable) and where it came from. Unknown ``FASTCTX_*`` variables are ignored: other commands
read some (``FASTCTX_TOKEN``).

It also adds the operations options both servers share: ``--metrics-port``/``--metrics-host``
(Prometheus, `shards.metrics`) and ``--log-format``/``--log-level`` (the access log).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import click

from fastctx.errors import FastctxError

ENV_PREFIX = "FASTCTX_"
LOG_FORMATS = ("text", "json")            # kept in step with shards.metrics (imported lazily)
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(FastctxError, ValueError):
    """A configuration file that cannot be read, or a key or value in it that is wrong."""


def flag_name(param: click.Parameter) -> str:
    """The long flag of an option without its dashes: ``--max-concurrent`` -> ``max-concurrent``."""
    longs = [o for o in param.opts if o.startswith("--")]
    return (max(longs, key=len) if longs else param.opts[0]).lstrip("-")


def env_name(param: click.Parameter) -> str:
    return ENV_PREFIX + flag_name(param).upper().replace("-", "_")


def read_file(path: Path) -> dict:
    """The table of a TOML or JSON configuration file (ConfigError naming the file if unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the configuration file ({type(e).__name__}: {e})") from None
    if Path(path).suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ConfigError(f"{path}: reading TOML needs Python 3.11 or the package tomli; "
                                  f"or write the file as JSON (a .json name)") from None
        try:
            obj = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a table of settings, got {type(obj).__name__}")
    return obj


def _defaults_from_file(ctx: click.Context, path: Path) -> dict:
    """The file's settings as click's default_map {parameter name: checked value}."""
    params = {flag_name(p): p for p in ctx.command.params if isinstance(p, click.Option) and p.name != "config"}
    out: dict[str, Any] = {}
    for key, value in read_file(path).items():
        p = params.get(str(key).replace("_", "-"))
        if p is None:
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {', '.join(sorted(params))}")
        if isinstance(value, dict):
            raise ConfigError(f"{path}: key {key!r}: expected a value, got a table")
        if p.multiple and not isinstance(value, list):
            value = [value]
        if isinstance(p.type, click.Path):     # relative to the file, not to where the server starts
            value = [_rel(path, v) for v in value] if p.multiple else _rel(path, value)
        try:
            out[p.name] = p.type_cast_value(ctx, value)
        except click.BadParameter as e:
            raise ConfigError(f"{path}: key {key!r}: {e.message}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: key {key!r}: {e}") from None
    return out


def _rel(path: Path, v):
    return str(Path(path).parent / v) if isinstance(v, str) and v and not Path(v).is_absolute() else v


def _load_config(ctx: click.Context, param: click.Parameter, value) -> None:
    if value is None:
        return
    try:
        ctx.default_map = {**(ctx.default_map or {}), **_defaults_from_file(ctx, Path(value))}
    except ConfigError as e:
        raise click.UsageError(str(e), ctx) from None


@dataclass(frozen=True)
class Ops:
    """The operations options of a serve command."""
    metrics_port: Optional[int]
    metrics_host: str
    log_format: str
    log_level: str

    def server_kw(self) -> dict:
        return {"metrics_port": self.metrics_port, "metrics_host": self.metrics_host}

    def announce(self, message: str) -> None:
        """The start-up line on stderr, whatever the level; in the JSON format, as a JSON line,
        so that a JSON log stays one object a line."""
        if self.log_format == "json":
            import logging
            from .metrics import JsonFormatter
            rec = logging.LogRecord("fastctx.server", logging.INFO, __file__, 0, message, None, None)
            message = JsonFormatter().format(rec)
        click.echo(message, err=True)


def server_options(fn: Callable) -> Callable:
    """Add --config, --metrics-port/--metrics-host and --log-format/--log-level to a serve
    command, give every option its FASTCTX_<FLAG> variable, and configure logging before the
    command runs. The command receives ``ops``, an `Ops`."""
    @functools.wraps(fn)
    def run(*args, metrics_port, metrics_host, log_format, log_level, **kw):
        from .metrics import configure_logging
        configure_logging(log_format, log_level)
        return fn(*args, ops=Ops(metrics_port, metrics_host, log_format, log_level), **kw)

    opts = [
        click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True,
                     help="Least severe log record written (info: one line per request)."),
        click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
                     help="Log lines on stderr as text or as one JSON object per line."),
        click.option("--metrics-host", default="127.0.0.1", show_default=True,
                     help="Address of the metrics endpoint (it has no authentication)."),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                     help="Serve Prometheus metrics over HTTP on this port (0: any free port; needs the "
                          "extra fastctx[metrics])."),
        click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, is_eager=True,
                     expose_value=False, callback=_load_config,
                     help="TOML or JSON file of settings (keys: flag names). Precedence: flag > FASTCTX_<FLAG> "
                          "environment variable > file > default."),
    ]
    own = list(getattr(fn, "__click_params__", []))
    run.__click_params__ = []
    for opt in opts:
        run = opt(run)
    run.__click_params__ = run.__click_params__ + own      # listed after the command's own options
    for p in run.__click_params__:
        if isinstance(p, click.Option) and p.envvar is None:
            p.envvar = env_name(p)
            p.show_envvar = True
    return run
