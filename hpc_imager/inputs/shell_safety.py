"""Values that reach a job script or a command line must not carry shell syntax where none belongs.

dask-jobqueue 0.9 pastes the queue, account, directives, python, interface, local directory and
log directory into the job script without quoting (``"#SBATCH -p %s" % queue``, ``"%(python)s -m
distributed.cli.dask_worker"``, ``--local-directory`` joined with spaces in core.py), and the
driver's job wrapper writes directives and prologue lines as they are. A newline in a queue name is a
new line of shell in every worker job; ``$(...)`` in a path runs when the job starts. So each kind of
value is held to what it needs, and the schemas (site_profile.py, cube_spec.py) refuse the rest with
an error that names the field:

* names (queue, account, interface, site name, SGE parallel environment): one word;
* paths: no whitespace, quotes or shell operators; site paths may name environment variables
  (``$TMPDIR``, ``/scratch/$USER``), which the job's shell expands on the node;
* directives: one line, no command substitution or ``;`` (``&``, ``|`` and ``[]`` stay: Slurm's
  ``--constraint`` uses them, and a directive is a comment to the shell);
* prologue lines: shell by design, so only one line each (no newline, carriage return or NUL).
"""

from __future__ import annotations

import re

_NAME = re.compile(r"[A-Za-z0-9_.@+,-]+")
_PATH_CHARACTER = re.compile(r"[A-Za-z0-9_./+@%:,=~-]")
_VARIABLE = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")
_LINE_BREAKS = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL character"}
_SUBSTITUTION = {"`": "a backtick", "$(": "'$(' (command substitution)", ";": "';'"}


def _describe(character: str) -> str:
    if character in _LINE_BREAKS:
        return _LINE_BREAKS[character]
    return "a space" if character == " " else "whitespace" if character.isspace() else repr(character)


def _one_line(value: str) -> None:
    for character, name in _LINE_BREAKS.items():
        if character in value:
            raise ValueError(f"contains {name}: {value!r}")


def name(value: str) -> str:
    """One word: letters, digits and ``_ . - @ + ,`` (``workq@server``, ``debug,batch``)."""
    _one_line(value)
    if not _NAME.fullmatch(value):
        bad = next(c for c in value if not _NAME.fullmatch(c))
        raise ValueError(f"contains {_describe(bad)}: {value!r}; only letters, digits and '_.-@+,' "
                         "(it is written unquoted into job scripts)")
    return value


def path(value: str, variables: bool = False) -> str:
    """A path that reads the same quoted or not; with ``variables``, ``$NAME``/``${NAME}`` may appear."""
    _one_line(value)
    rest = _VARIABLE.sub("", value) if variables else value
    for substitution, description in _SUBSTITUTION.items():
        if substitution in rest:
            raise ValueError(f"contains {description}: {value!r}")
    bad = next((c for c in rest if not _PATH_CHARACTER.fullmatch(c)), None)
    if bad is not None:
        allowed = "letters, digits, '_./+@%:,=~-'" + (" and $VARIABLES" if variables else "")
        raise ValueError(f"contains {_describe(bad)}: {value!r}; a path here may hold only {allowed} "
                         "(it is written unquoted into job scripts and command lines)")
    return value


def directive(value: str) -> str:
    """One scheduler directive: one line, no command substitution or ``;``."""
    _one_line(value)
    for substitution, description in _SUBSTITUTION.items():
        if substitution in value:
            raise ValueError(f"contains {description}: {value!r}")
    return value


def shell_line(value: str) -> str:
    """A line of shell (a prologue line): anything on one line."""
    _one_line(value)
    return value
