"""`chatctl`, the admin command line: API keys, sessions, history cleanup, export and import, usage.

It reads the same settings as the server (REDIS_URL, REDIS_CLUSTER, REDIS_PREFIX, `.env`).
With REDIS_URL unset it connects to the embedded Redis of the server (the Unix socket under
DATA_DIR), and says so if that is not running: it never starts one of its own, because a
server started meanwhile would reuse it and lose its store when the command ends.

Every command prints machine-readable JSON with `--json`, and fails with exit status 1 and
a one-line reason on stderr (2 for a usage error, 130 when interrupted with Ctrl+C).
Destructive commands ask for confirmation unless `--yes`, and show a progress bar on stderr.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="chatctl",
    help="Administer the persona chat service: API keys, sessions, cleanup, export and import.\n\n"
    "Reads the server's settings (REDIS_URL, REDIS_CLUSTER, REDIS_PREFIX, .env).\n\n"
    "Example: chatctl keys create --user alice --label laptop",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
sessions_app = typer.Typer(help="List sessions.", no_args_is_help=True)
history_app = typer.Typer(help="Delete a user's conversations.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(sessions_app, name="sessions")
app.add_typer(history_app, name="history")
personas_app = typer.Typer(help="List, export, import and delete a user's own personas.", no_args_is_help=True)
app.add_typer(personas_app, name="personas")


def main() -> None:
    app()


# The command modules register themselves on the apps above.
from personachat.admin.cli import (  # noqa: E402, F401
    cleanup,
    keys,
    personas,
    sessions,
    transfer,
    usage,
)

if __name__ == "__main__":
    main()
