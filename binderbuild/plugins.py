"""The one plugin mechanism: classes found by entry-point name or import string.

Builders, launchers and repository providers are chosen in configuration by
a short name registered in an entry-point group of any installed package
(``binderbuild.builders``, ``binderbuild.launchers``,
``binderbuild.providers``; binderbuild's own are in ``pyproject.toml``), or
by an import string (``mypackage.module.Class``) for classes that are not
packaged. A configured class object is accepted as it is.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from traitlets.utils.importstring import import_item

from binderbuild.errors import ConfigError


def load(group: str, name: str | type[Any], base: type[Any]) -> type[Any]:
    """The class ``name`` names in ``group``; ConfigError unless it is a
    subclass of ``base``. (``base`` may be abstract, so the result is typed
    by the caller.)"""
    if isinstance(name, type):
        klass: Any = name
    else:
        matches = [ep for ep in entry_points(group=group) if ep.name == name]
        try:
            klass = matches[0].load() if matches else import_item(name)
        except (ImportError, AttributeError, ValueError) as exc:
            known = ", ".join(sorted(ep.name for ep in entry_points(group=group)))
            raise ConfigError(
                f"Cannot load {name!r} from {group} (known names: {known}): {exc}"
            ) from None
    if not (isinstance(klass, type) and issubclass(klass, base)):
        raise ConfigError(f"{name!r} is not a {base.__name__} (group {group}).")
    return klass


def names(group: str) -> list[str]:
    """The names registered in an entry-point group."""
    return sorted(ep.name for ep in entry_points(group=group))
