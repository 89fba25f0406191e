"""One module per Snakemake rule, and the adapter that calls them.

Every rule of the workflow runs ``workflow/scripts/stage.py``, which hands
Snakemake's ``snakemake`` object to :func:`run_from_snakemake`.  The adapter

1. picks the stage module ``nnpflow.stages.<stage>``, where ``<stage>`` is the
   rule's ``params.stage`` (or the rule name when there is none);
2. sends ``logging`` (and Python warnings) to the job's log file, ``log[0]``,
   and the process's own stdout and stderr there too (file descriptors 1 and 2,
   so also what torch, HDF5 and other C libraries print, and the output of the
   processes the stage starts); warnings and errors are also shown on the
   console Snakemake runs in;
3. sets torch's threads from the rule's ``threads`` (:func:`nnpflow.runtime.configure_threads`);
4. calls ``nnpflow.stages.<stage>.run(**kwargs)`` with the rule's *named* inputs,
   *named* outputs and params (except ``stage`` and ``code``, which only exist to
   pick the module and to make Snakemake rerun the job when the code changes),
   plus ``threads=`` when ``run`` accepts it.  A name given one file arrives as a
   ``str``; a name given a list arrives as a ``list`` (even of length 1).  Unnamed
   inputs and outputs only order the jobs and are not passed;
5. logs any exception with its message and re-raises it, so that Snakemake marks
   the job failed and removes its outputs.

Stage functions therefore read files and write files only: they can run alone,
on another node, or again, and they can be called directly in tests.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Mapping

from ..errors import NNPFlowError

LOGGER = logging.getLogger("nnpflow.stages")

#: params that steer the adapter and are not passed to the stage function
ADAPTER_PARAMS = frozenset({"stage", "code"})

_STAGE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def stage_function(stage: str) -> Callable[..., Any]:
    """The ``run`` function of ``nnpflow.stages.<stage>``."""
    if not _STAGE_NAME.match(stage or ""):
        raise ValueError(f"invalid stage name {stage!r} (expected a module name "
                         f"of nnpflow.stages)")
    module = importlib.import_module(f"{__name__}.{stage}")
    func = getattr(module, "run", None)
    if not callable(func):
        raise AttributeError(f"stage module {module.__name__} has no run() function")
    return func


def _plain(value: Any) -> Any:
    """Snakemake's Namedlist (a list subclass) -> list; everything else as is."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _named(container: Any) -> dict[str, Any]:
    """Named entries of a Snakemake input/output/params container."""
    if container is None:
        return {}
    if isinstance(container, Mapping):
        return {k: _plain(v) for k, v in container.items()}
    return {name: _plain(value) for name, value in container.items()}


def stage_kwargs(func: Callable[..., Any], inputs: Mapping[str, Any],
                 outputs: Mapping[str, Any], params: Mapping[str, Any],
                 threads: int | None = None, stage: str = "?") -> dict[str, Any]:
    """Keyword arguments for ``func`` from a job's named inputs, outputs and params.

    Raises ``TypeError`` naming the rule's entries when a name appears twice or
    does not match ``func``'s parameters (nothing is dropped silently).
    """
    kwargs: dict[str, Any] = {}
    for kind, entries in (("input", inputs), ("output", outputs), ("params", params)):
        for name, value in entries.items():
            if kind == "params" and name in ADAPTER_PARAMS:
                continue
            if name in kwargs:
                raise TypeError(f"stage {stage!r}: {kind}.{name} clashes with another "
                                f"input/output/param of the same name")
            kwargs[name] = value
    sig = inspect.signature(func)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if threads is not None and ("threads" in sig.parameters or takes_any):
        kwargs.setdefault("threads", int(threads))
    if not takes_any:
        unknown = sorted(set(kwargs) - set(sig.parameters))
        if unknown:
            raise TypeError(f"stage {stage!r}: run() takes no argument(s) {unknown}; "
                            f"the rule's named input/output/params must match "
                            f"{list(sig.parameters)}")
    missing = sorted(
        name for name, p in sig.parameters.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in kwargs)
    if missing:
        raise TypeError(f"stage {stage!r}: the rule gives no value for run() "
                        f"argument(s) {missing}")
    return kwargs


def configure_logging(log_file: str | None, level: int = logging.INFO,
                      console: Any = None, append: bool = False) -> None:
    """Send ``logging`` records (and warnings) to ``log_file`` (overwritten, or
    appended to with ``append``) and to ``console`` (default: ``sys.stderr``).

    With a log file, only warnings and errors go to the console, so that they show
    in Snakemake's own output.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%Y-%m-%d %H:%M:%S")
    if log_file:
        file_handler = logging.FileHandler(log_file, mode="a" if append else "w",
                                           encoding="utf-8")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    err = logging.StreamHandler(sys.stderr if console is None else console)
    err.setLevel(logging.WARNING if log_file else level)
    err.setFormatter(fmt)
    root.addHandler(err)
    root.setLevel(level)
    logging.captureWarnings(False)  # re-arm: someone may have replaced showwarning since
    logging.captureWarnings(True)


@contextlib.contextmanager
def output_to_log(log_file: str | None):
    """Within the block, file descriptors 1 and 2 (stdout, stderr) write to
    ``log_file`` (truncated first, then appended to, so that the ``logging``
    handler opened with ``append=True`` and the raw output interleave in order).

    Yields a text stream on the original stderr (the console), or ``sys.stderr``
    when there is no log file.  Restores both descriptors on exit.
    """
    if not log_file:
        yield sys.stderr
        return
    open(log_file, "w").close()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    target = os.open(log_file, os.O_WRONLY | os.O_APPEND)
    console = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8",
                        errors="backslashreplace")
    try:
        for fd in (1, 2):
            os.dup2(target, fd)
        yield console
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(target)
        console.close()


def run_from_snakemake(smk: Any) -> Any:
    """Run the stage of a Snakemake job (the ``snakemake`` object of a script)."""
    log_files = list(getattr(smk, "log", None) or [])
    with output_to_log(str(log_files[0]) if log_files else None) as console:
        return _run_job(smk, str(log_files[0]) if log_files else None, console)


def _run_job(smk: Any, log_file: str | None, console: Any) -> Any:
    params = _named(smk.params)
    stage = params.get("stage") or smk.rule
    configure_logging(log_file, console=console, append=True)
    threads = getattr(smk, "threads", None)
    try:
        from ..runtime import configure_threads, keep_freed_memory
        n_threads = configure_threads(threads)
        keep_freed_memory()  # a job is one compute process: reuse freed memory
        func = stage_function(stage)
        kwargs = stage_kwargs(func, _named(smk.input), _named(smk.output), params,
                              threads=threads, stage=stage)
        LOGGER.info("rule %s: nnpflow.stages.%s.run(%s) with %s thread(s)",
                    smk.rule, stage, ", ".join(sorted(kwargs)), n_threads)
        start = time.perf_counter()
        result = func(**kwargs)
        LOGGER.info("rule %s: done in %.2f s", smk.rule, time.perf_counter() - start)
        return result
    except NNPFlowError as exc:
        LOGGER.error("rule %s failed: %s", smk.rule, exc)
        raise
    except Exception as exc:
        LOGGER.exception("rule %s failed: %s: %s", smk.rule, type(exc).__name__, exc)
        raise
    finally:
        logging.shutdown()
        root = logging.getLogger()
        for handler in list(root.handlers):  # they write to streams closed after the job
            root.removeHandler(handler)
