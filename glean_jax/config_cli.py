"""How a command line reads a config: ``--config FILE[:ARG]`` and ``--config.FIELD=VALUE`` overrides, parsed by
ml_collections ``config_flags`` (as ``python -m glean_jax.train`` parses its own), every problem one line.

``evaluate --checkpoint`` and ``benchmark`` read their config with :func:`load_config`; ``train`` defines the same
``config_flags`` flag beside its other flags, afresh for each argv (``glean_jax.train.parse_args``, which maps the
errors of its absl flags too), and calls :func:`forget_loaded_config` and :func:`apply_none_overrides`. On top of
``config_flags``:

* an override of a field the config does not have names the field and the fields that level has;
* ``--config.FIELD=None`` sets a field that may be None (a ``placeholder`` or a field that is None now) to None,
  where ``config_flags`` would store the text ``'None'`` (``train`` too: :func:`apply_none_overrides`);
* ``--config.FIELD VALUE`` (two arguments) is taken as ``--config.FIELD=VALUE``.

Importing this module does not import JAX.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import flags
from ml_collections import ConfigDict, config_dict, config_flags

from glean_jax.errors import UserError

OVERRIDE_PREFIX = "--config."
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             tuple: "a Python tuple literal", list: "a Python list literal", dict: "a Python dict literal"}


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--config.a.b=v`` / ``--config.a.b v`` from the other arguments: (rest, [(a.b, v), ...])."""
    rest: list[str] = []
    overrides: list[tuple[str, str]] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith(OVERRIDE_PREFIX):
            key, eq, value = a[len(OVERRIDE_PREFIX):].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise UserError(f"{a}: no value; expected {a}=VALUE")
                value = args[i + 1]
                i += 1
            if not key:
                raise UserError(f"{a}: no field name; expected --config.FIELD=VALUE")
            overrides.append((key, value))
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def config_error(e: BaseException, spec: str) -> UserError:
    """One line for an exception that ``config_flags`` raised while loading ``spec`` or applying an override."""
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, flags.IllegalFlagValueError):   # "flag --config.a=v: reason"
        return UserError(f"{first.removeprefix('flag ')}; expected a value of the field's type")
    if isinstance(e, (SyntaxError, ImportError, OSError, AttributeError, NameError, TypeError)):
        last = str(e).splitlines()[-1].strip() if str(e) else ""
        return UserError(f"--config {spec}: cannot load the config file ({type(e).__name__}: {last or first}); "
                         "expected a Python file whose get_config() returns a ConfigDict, such as configs/demo.py")
    return UserError(f"--config {spec}: {first}")


def forget_loaded_config() -> None:
    """Drops the module that ``config_flags`` executed the last config file into (``sys.modules['config_config']``;
    ``SourceFileLoader.load_module`` reuses it, so a file without ``get_config()`` would return the earlier file's
    config). Called before every parse."""
    sys.modules.pop("config_config", None)


def _parse(spec: str, args: Sequence[str], bad_values: bool = True) -> ConfigDict:
    """Loads ``spec`` with the override arguments ``args``; ``bad_values=False`` lets an override's
    ``IllegalFlagValueError`` through (the caller names the field's type)."""
    forget_loaded_config()
    fv = flags.FlagValues()
    argv = ["glean_jax", f"--config={spec}", *args]
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True, sys_argv=argv)
    try:
        fv(argv)
        config = fv.config
        config.keys()   # a file that failed to load is a stand-in object that raises here
    except UserError:
        raise
    except flags.IllegalFlagValueError as e:
        if not bad_values:
            raise
        raise config_error(e, spec) from e
    except Exception as e:  # noqa: BLE001 - config_flags raises many types; each becomes one line
        raise config_error(e, spec) from e
    if not isinstance(config, ConfigDict):
        raise UserError(f"--config {spec}: get_config() returned {type(config).__name__}; expected a ConfigDict")
    return config


def _field(config: ConfigDict, key: str) -> tuple[ConfigDict, str]:
    """(the ConfigDict holding ``key``'s leaf, the leaf name); one line naming the field when there is none."""
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            parent = "config" + "".join("." + p for p in parts[:depth])
            known = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else ""
            raise UserError(f"--config.{key}: the config has no field config.{'.'.join(parts[:depth + 1])}"
                            + (f"; expected one of the fields of {parent}: {known}" if known else ""))
        if depth < len(parts) - 1:
            node = node[part]
    if isinstance(node[parts[-1]], ConfigDict):
        raise UserError(f"--config.{key}: is a group of fields; expected a leaf such as "
                        f"--config.{key}.{next(iter(node[parts[-1]]))}")
    return node, parts[-1]


def _nullable(node: ConfigDict, leaf: str) -> bool:
    return node[leaf] is None or isinstance(getattr(node, "_fields", {}).get(leaf), config_dict.FieldReference)


def load_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ConfigDict:
    """``get_config()`` of the file ``spec`` (``FILE`` or ``FILE:ARG``) with ``overrides`` [(field, text)] applied
    by ``config_flags`` (typed by the field; unknown fields and bad values are one-line UserErrors)."""
    path = Path(spec if Path(spec).is_file() else spec.partition(":")[0])
    if not path.is_file():
        raise UserError(f"--config {path}: no such file; expected a Python config file such as configs/cat_x8.py")
    base = _parse(spec, [])
    args, nulls = [], []
    for key, text in overrides:
        node, leaf = _field(base, key)
        if text == "None" and _nullable(node, leaf):
            nulls.append(key)
        else:
            args.append(f"--config.{key}={text}")
    try:
        config = _parse(spec, args, bad_values=False)
    except flags.IllegalFlagValueError as e:   # "flag --config.a.b=v: reason"
        head, _, reason = str(e).splitlines()[0].removeprefix("flag ").partition(": ")
        key = head.removeprefix(OVERRIDE_PREFIX).partition("=")[0]
        node, leaf = _field(base, key)
        raise UserError(f"{head}: {reason}; expected {_EXPECTED.get(node.get_type(leaf), 'a value of its type')}"
                        ) from None
    for key in nulls:
        node, leaf = _field(config, key)
        node[leaf] = None
    return config


def apply_none_overrides(config: ConfigDict, argv: Sequence[str]) -> ConfigDict:
    """Sets to None every nullable field that ``argv`` overrides with ``None`` (``config_flags`` -- as ``train``
    parses -- stores the text ``'None'`` there); other fields keep what ``config_flags`` made of the text."""
    _, overrides = split_overrides(argv)
    for key, text in overrides:
        if text != "None":
            continue
        node, leaf = _field(config, key)
        if _nullable(node, leaf) and node[leaf] in (None, "None"):
            node[leaf] = None
    return config
