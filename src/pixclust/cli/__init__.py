"""The ``pixclust`` command: parse arguments, call the library, render the result.

Nothing else lives here. The library raises :class:`PixclustError` for
anything a user can cause; :func:`main` prints its one-line message and
exits with its code, so a user never sees a traceback for their own mistake.
Commands import the library inside their bodies, so that ``pixclust --help``
loads neither torch nor scikit-learn.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from pixclust.cli import label_commands, lookalike_commands, run_commands
from pixclust.cli.options import LibraryDefaultsCommand
from pixclust.cli.render import console, shown
from pixclust.errors import PixclustError

__all__ = ["app", "main"]

app = typer.Typer(
    help="Organise unlabeled images: embed them with a pretrained network, cluster, and export the groups.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: with Rich markup on, every "[default: ...]" in an option's help vanished as an unknown tag.
    rich_markup_mode=None,
)

# In the order help lists them: a run's commands, then those on its embeddings, then labelling, then the repairs.
for _name, _command in (
    ("cluster", run_commands.cluster_command),
    ("add", run_commands.add_command),
    ("report", run_commands.report_command),
    ("apply", run_commands.apply_command),
    ("embed-shards", run_commands.embed_shards_command),
    ("cluster-shards", run_commands.cluster_shards_command),
    ("export", run_commands.export_command),
    ("models", run_commands.models_command),
    ("demo", run_commands.demo_command),
    ("similar", lookalike_commands.similar_command),
    ("duplicates", lookalike_commands.duplicates_command),
    ("duplicates-shards", lookalike_commands.duplicates_shards_command),
    ("label", label_commands.label_command),
    ("train", label_commands.train_command),
    ("evaluate", label_commands.evaluate_command),
    ("predict", label_commands.predict_command),
    ("resume-move", run_commands.resume_move_command),
    ("restore", run_commands.restore_command),
):
    app.command(_name, cls=LibraryDefaultsCommand)(_command)

EXIT_INTERRUPTED = 130


def main() -> None:
    """Entry point: run the Typer app, turning library errors and Ctrl-C into messages and exit codes."""
    from pixclust.progress import warnings_as_lines

    with warnings_as_lines():
        _run_app()


def _run_app() -> None:
    try:
        code = app(standalone_mode=False)
    except PixclustError as error:
        # A message such as "pip install 'pixclust[ray]'" holds brackets, and one naming a file may hold anything.
        console(stderr=True).print(f"[red]error:[/red] {shown(error)}")
        sys.exit(error.exit_code)
    except OSError as error:
        from pixclust.atomic import DISK_FULL_ERRNOS

        if error.errno not in DISK_FULL_ERRNOS:
            raise
        # Every file is written beside its target and renamed into place, and a move copies before it unlinks,
        # so a full disk leaves what was there before whole. A copy names its source first, its destination second.
        written = error.filename2 or error.filename
        console(stderr=True).print(
            "[red]error:[/red] no space left on the disk"
            + (f" while writing {shown(written)}" if written else "")
            + "; free some space and run the same command again (work done so far is kept)"
        )
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        _exit_interrupted()
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as error:
        # Typer's own (vendored click) usage errors: an unknown option, a missing argument.
        error.show()
        sys.exit(error.exit_code)
    # Typer returns, rather than raises, the exit code of a command that ended in typer.Exit or Ctrl-C.
    if code == EXIT_INTERRUPTED:
        _exit_interrupted()
    sys.exit(code)


def _exit_interrupted() -> NoReturn:
    console(stderr=True).print("interrupted; embeddings made so far are saved, run the same command to resume")
    sys.exit(EXIT_INTERRUPTED)
