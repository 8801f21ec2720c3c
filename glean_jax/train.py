"""Train GLEAN: ``python -m glean_jax.train --config configs/ffhq_x16.py --workdir DIR [--config.field=value ...]``.

The config files (``configs/*.py``) mirror mmagic's GLEAN configs; any field can be overridden on the command line
(``--config.batch_size=8``, ``--config.pretrained.stylegan2=stylegan2_ffhq1024``: ``pretrained.*`` take a
model name of ``python -m glean_jax.zoo list``, downloaded and converted on first use, a ``.pth``, a training workdir
or a converted directory). The config is validated before
any compute: unknown fields and bad values stop with one line (exit 2; ``--debug`` shows the traceback). An
existing ``--workdir`` resumes from its latest checkpoint. SIGTERM / Ctrl-C save a checkpoint and exit cleanly.

Multi-host: start one process per host with ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``
(or ``--distributed`` to let ``jax.distributed.initialize()`` detect SLURM / Open MPI / TPU / Kubernetes settings).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import ConfigDict, config_flags

from glean_jax.errors import UserError, cli_entry


@dataclasses.dataclass(frozen=True)
class Args:
    """A parsed command line: the config (with its overrides) and the other flags."""

    config: ConfigDict
    workdir: str
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    distributed: bool
    progress: bool


def _flag_values(argv: Sequence[str]) -> flags.FlagValues:
    """This command's flags, defined afresh for ``argv`` (``config_flags`` reads the ``--config.*`` overrides from
    the argv it is given, so a parse depends on nothing global)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)", flag_values=fv,
                                    lock_config=True, sys_argv=["glean_jax.train", *argv])
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, TensorBoard logs, samples); resumed if present",
                        flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "multi-host: number of processes", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "multi-host: this process's index", flag_values=fv)
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detected cluster settings",
                      flag_values=fv)
    flags.DEFINE_bool("progress", True, "show a progress bar", flag_values=fv)
    return fv


def parse_args(argv: Sequence[str]) -> Args:
    """Parses ``argv`` (without the program name). Every problem is one UserError."""
    from glean_jax.config_cli import apply_none_overrides, forget_loaded_config

    forget_loaded_config()
    fv = _flag_values(argv)
    try:
        fv(["glean_jax.train", *argv])
    except flags.UnrecognizedFlagError as e:
        name = str(e).split("'")[1] if "'" in str(e) else str(e)
        what = "unknown config field" if name.startswith("config.") else "unknown flag"
        raise UserError(f"command line: {what} --{name}; expected --config FILE --workdir DIR "
                        "[--config.field=value ...] with fields of glean_jax/training/config.py base_config") from e
    except flags.Error as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"command line: {msg}; expected --config FILE --workdir DIR [--config.field=value ...]") from e
    except (SyntaxError, ImportError, OSError) as e:   # config_flags executes the config file while parsing
        raise UserError(f"--config: cannot load the config file ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "expected a python file with get_config(), such as configs/demo.py") from e
    except (AttributeError, KeyError) as e:   # config_flags: an override of a field the config does not have
        name = str(e).strip("\"'")
        raise UserError(f"command line: unknown config field {name!r}; expected fields of "
                        "glean_jax/training/config.py base_config") from e
    except (TypeError, ValueError) as e:   # config_flags override errors
        raise UserError(f"command line: {str(e).splitlines()[0]}; expected existing config fields with values of "
                        "the right type") from e
    try:
        config = fv.config
        if config is not None:
            config.keys()   # a file that failed to load is a stand-in object that raises here
    except Exception as e:  # noqa: BLE001 - config_flags loads the file lazily and raises many types
        raise UserError(f"--config: cannot load the config file ({str(e).splitlines()[-1].strip()}); expected a "
                        "python file with get_config(), such as configs/demo.py") from e
    if config is None:
        raise UserError("--config: missing; expected a training config file such as configs/demo.py")
    apply_none_overrides(config, argv)
    if not fv.workdir:
        raise UserError("--workdir: missing; expected the run directory (created if needed, resumed if present)")
    return Args(config, fv.workdir, fv.coordinator_address, fv.num_processes, fv.process_id, fv.distributed,
                fv.progress)


def check_workdir(workdir: str) -> None:
    """A UserError when ``workdir`` cannot be a run directory (a file, below a file, or not writable)."""
    import os
    from pathlib import Path

    p = Path(workdir)
    if p.exists() and not p.is_dir():
        raise UserError(f"--workdir {p}: exists and is not a folder; expected a run folder (created if needed, "
                        "resumed if present)")
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--workdir {p}: {parent} is a file, not a folder; expected a path whose folders can be "
                        "created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {p}: cannot write in {parent} (permission denied); expected a writable location")


def init_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                     auto: bool) -> None:
    """``jax.distributed.initialize`` when asked; must run before any other JAX call."""
    import jax

    if coordinator_address or num_processes is not None or process_id is not None:
        if not (coordinator_address and num_processes is not None and process_id is not None):
            raise UserError("--coordinator_address, --num_processes and --process_id: expected all three or none")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif auto:
        jax.distributed.initialize()


def params_digest(tree: object) -> str:
    """sha256 of a param tree's arrays (in tree order): every process of a run prints the same value."""
    import hashlib

    import jax
    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    config = args.config
    from glean_jax.training.config import validate_config

    validate_config(config, check_files=False)   # the files, after resolve_pretrained, in train_and_evaluate
    check_workdir(args.workdir)
    init_distributed(args.coordinator_address, args.num_processes, args.process_id, args.distributed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from glean_jax.training.loop import train_and_evaluate

    summary = train_and_evaluate(config, args.workdir, progress=args.progress)
    import jax

    ev = summary["eval"]
    last = ev[max(ev)] if ev else {}
    print(f"[process {jax.process_index()}/{jax.process_count()}] step {summary['step']}"
          + (f" (stopped by {summary['stopped']})" if summary["stopped"] else "")
          + "".join(f", {k} {v:.4f}" for k, v in last.items())
          + f"; G params sha256 {params_digest(summary['state'].g_params)[:16]}; workdir {args.workdir}", flush=True)
    return 0


if __name__ == "__main__":
    cli_entry(main)
