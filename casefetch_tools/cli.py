"""The `casefetch` command. Each subcommand's module is loaded only when that subcommand runs
(click's lazily loaded subcommands): `casefetch receiver` loads the receiver and not Celery
or the worker, whose imports would double the receiver process's memory."""

from __future__ import annotations

import importlib

import click

#: Subcommand name -> "module:attribute" of its click command.
COMMANDS = {
    "receiver": "casefetch_tools.receiver_command:receiver",
    "worker": "casefetch_tools.worker_command:worker",
    "run": "casefetch_tools.run_command:run",
    "send": "casefetch_tools.platform_commands:send",
    "demo": "casefetch_tools.platform_commands:demo",
    "archive": "casefetch_tools.archive:archive",
    "quarantine": "casefetch_tools.quarantine:quarantine",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when one is asked for by name."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), target
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="casefetch")
def main() -> None:
    """casefetch: receive certificate cases by webhook and archive their files, verified."""
