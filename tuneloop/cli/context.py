"""What the commands of one `tuneloop` invocation share: settings and registry client, loaded lazily.

Each `*_cmd` module imports this, never `tuneloop.cli.main` (which imports every command module).
"""

from __future__ import annotations

from typing import Any

import click


class AppContext:
    """Lazily loaded settings and registry client shared by the commands of one invocation."""

    def __init__(self, config_file: str | None) -> None:
        self.config_file = config_file
        self._settings: Any = None
        self._registry: Any = None
        self.json = False

    @property
    def settings(self) -> Any:
        if self._settings is None:
            from tuneloop.settings import load_settings

            self._settings = load_settings(self.config_file)
        return self._settings

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from tuneloop.registry.client import RegistryClient

            self._registry = RegistryClient(self.settings)
        return self._registry


pass_app = click.make_pass_decorator(AppContext)
