"""Shared pieces of the command line: the Typer apps, consoles, errors, progress."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from xreg import __version__
from xreg.errors import ConfigError, LockedError, XregError

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


class Device(str, Enum):
    """Where a model runs; ``auto`` picks CUDA when present."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Runtime(str, Enum):
    """What runs the model: ONNX Runtime, PyTorch, or ``auto`` (ONNX when exported)."""

    auto = "auto"
    onnx = "onnx"
    torch = "torch"


RUNTIME_HELP = ("What runs the model: onnx (ONNX Runtime, the export beside the checkpoint), "
                "torch, or auto (onnx when installed and exported, else torch). Decisions "
                "are the same.  [default: auto]")

GROUP_BY_HELP = ("Which folder levels under IN are the patient and the study, for archives "
                 "without DICOM identity (JPEG, PNG): e.g. '{patient}/{study}', or "
                 "'*/{patient}/{study}' (* skips a level, such as a site folder). A file "
                 "deeper than the pattern belongs to it; one too shallow gets no patient or "
                 "study (the summary counts them). The patient is stored only as the "
                 "registry's keyed hash (as PatientID is), the study as a keyed hash; the "
                 "folder name is never stored or shown: source paths and names in OUT read "
                 "the key instead. DICOM header identity (PatientID, StudyInstanceUID) wins "
                 "where present.")


app = typer.Typer(
    help="Sort folders of musculoskeletal radiographs into a patient registry.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold patient data
    add_completion=False,
)
registry_app = typer.Typer(help="Query the SQLite registry of a sorted folder.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry")
weights_app = typer.Typer(help="Inspect and create model checkpoints.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

def _console(stderr: bool = False) -> Console:
    """A terminal's console; to a log or pipe, one that never wraps tables at 80
    columns (they print at their natural width, and lines stay greppable)."""
    console = Console(stderr=stderr, soft_wrap=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, soft_wrap=True, width=_LOG_WIDTH)


_LOG_WIDTH = 400
out = _console()
err = _console(stderr=True)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Map library errors to a one-line message and an exit code."""
    try:
        yield
    except LockedError as exc:
        err.print(f"[bold red]locked:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_LOCKED) from None
    except (ConfigError, XregError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")  # paths, [extras]: no markup
        raise typer.Exit(EXIT_USAGE) from None


#: The modules the `train` extra brings, and what each command needs of them.
TRAIN_MODULES = ("torch", "torchvision", "captum", "sklearn", "matplotlib", "scipy")


def require_train(command: str, modules: tuple[str, ...] = TRAIN_MODULES) -> None:
    """Exit 2 before any work, saying what to install, when ``modules`` are missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        err.print("[bold red]error:[/] " + escape(
            f'{command} needs the train extra: pip install "xreg[train]" '
            f'(missing: {", ".join(missing)})'), highlight=False)
        raise typer.Exit(EXIT_USAGE)


def _version(value: bool) -> None:
    if value:
        out.print(f"xreg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """xreg: body part, instrument and hip-fracture registry for radiographs."""


class _Reporter:
    """Rich bar on a terminal; plain periodic log lines otherwise (cron, CI)."""

    def __init__(self, progress: Progress | None, quiet: bool,
                 description: str = "sorting") -> None:
        self.progress, self.quiet, self.description = progress, quiet, description
        self.total = self.done = 0
        self.task: Any = None
        self.last_log = self.started = time.monotonic()

    def start(self, total: int) -> None:
        self.total = total
        if self.progress is not None:
            self.task = self.progress.add_task(self.description, total=total)
        elif not self.quiet:
            err.print(f"xreg: {total} file(s) to sort", highlight=False)

    def advance(self, outcome: Any) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress.advance(self.task)
            return
        now = time.monotonic()
        if not self.quiet and (now - self.last_log >= 10 or self.done == self.total):
            rate = self.done / max(now - self.started, 1e-9)
            err.print(f"xreg: {self.done}/{self.total} files ({rate:.1f}/s)", highlight=False)
            self.last_log = now


@contextmanager
def progress_reporter(quiet: bool, description: str = "sorting") -> Iterator[_Reporter]:
    if quiet or not err.is_terminal:
        yield _Reporter(None, quiet, description)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        yield _Reporter(progress, quiet, description)
