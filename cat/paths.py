"""Paths with a scheme: ``tiny:arith`` or ``tiny:arith/train.jsonl`` name a folder or file that a
plug-in provides (and may build on first use).

A model path (``model.name_or_path``, ``anchor.model``, ``judge.model``) or a data path
(``data.path``, ``eval.path``) that starts with ``NAME:`` goes to the function registered for
``NAME`` with ``@register_scheme(NAME)``, which returns a local path. Any other path, and one whose
scheme nobody registered (``reasoning-gym:TASK``, read by ``cat.tasks.data`` itself), is returned
unchanged.

The library imports no world. The tiny worlds register ``tiny:`` in ``cat.worlds``, a plug-in
like a user's. Because the default config runs on ``tiny:arith``, a scheme that is not registered
yet and that ``PROVIDERS`` names is imported on first use, as ``plugins:`` would import it.
"""

from __future__ import annotations

from collections.abc import Callable

from cat.registry import Registry, import_plugin

SCHEMES: Registry[Callable[[str], str]] = Registry("path scheme")
"""Scheme name (before the colon) -> resolver: the whole path in, a local path out."""

PROVIDERS = {"tiny": "cat.worlds"}
"""The plug-in that registers each scheme the defaults use: imported when its scheme is first met."""


def register_scheme(name: str, *, replace: bool = False) -> Callable[[Callable[[str], str]], Callable[[str], str]]:
    return SCHEMES.register(name, replace=replace)


def resolve(path: str) -> str:
    """The local path that ``path`` names: its scheme's resolver's answer, else ``path`` itself."""
    scheme, colon, _ = path.partition(":")
    if not colon:
        return path
    if scheme not in SCHEMES and scheme in PROVIDERS:
        import_plugin(PROVIDERS[scheme])
    if scheme not in SCHEMES:
        return path
    return SCHEMES.get(scheme)(path)
