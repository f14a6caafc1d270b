"""`--help` that reads at 80 columns: each option's names on the left, its description beside them.

Typer's own layout gives every option six columns (long name, short name, --no- name, its short
name, type, description) whose widths are shared by all rows of a panel, so one long --x/--no-x
flag and one range such as [1<=x<=100] leave the description 17 characters at 80 columns and cut
names to "--no-skip-exis…". Here an option is one entry, `-o, --output PATH` or
`--skip-existing / --no-skip-existing`, in a names column of at most about a third of the width;
an entry whose names are wider starts on a line of its own with its description below, so a name
is never cut and the description keeps the rest of the line. Everything else is Typer's: the
panels (rich_help_panel), the help texts (Rich markup), the defaults (shown once: a help text that
says its default itself gets none added). A bracket that is not a Rich style, as in
pip install 'srgan-cli[text]', is printed as it is rather than swallowed as markup.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterable
from enum import Enum
from typing import Any, get_args

import typer
from rich.console import Console, Group
from rich.errors import StyleSyntaxError
from rich.padding import Padding
from rich.panel import Panel
from rich.style import Style
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

OPTIONS = "Options"
ARGUMENTS = "Arguments"
COMMANDS = "Commands"
_GAP = 2  # spaces between the names column and the descriptions
_MIN_HELP = 30  # the names column never leaves the descriptions less than this

_BRACKETS = re.compile(r"(\\*)\[([^\[\]\n]*)\]")


def markup(text: str, style: str = "") -> Text:
    """Rich markup where a bracket holds a style or a closing tag ([bold], [/]); any other bracket
    ([text], [default: 4], [x>=1]) is kept as written."""

    def keep_literal(match: re.Match[str]) -> str:
        slashes, body = match.group(1), match.group(2)
        if len(slashes) % 2 or _is_tag(body):
            return match.group(0)
        return f"{slashes}\\[{body}]"

    return Text.from_markup(_BRACKETS.sub(keep_literal, text), style=style)


def _is_tag(body: str) -> bool:
    if body.startswith("/") or body.startswith("link="):
        return True
    try:
        Style.parse(body)
    except StyleSyntaxError:
        return False
    return bool(body.strip())


def paragraphs(text: str) -> list[str]:
    """A docstring's paragraphs with their line breaks joined (a paragraph that starts with \\b
    keeps them, as in Click), cut at a \\f line."""
    text = inspect.cleandoc(text).partition("\f")[0]
    out = []
    for block in text.split("\n\n"):
        if block.startswith("\b"):
            out.append(block.removeprefix("\b").strip("\n"))
        elif block.strip():
            out.append(" ".join(block.split()))
    return out


def _metavar(param: Any) -> str:
    """What follows an option's name: its metavar, the choices (a|b|c), or the kind of value."""
    if param.metavar is not None:
        return str(param.metavar)
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return "VALUE"
    if desc.is_choice:
        return "|".join(str(c.value if isinstance(c, Enum) else c) for c in desc.choices or ())
    annotation = desc.annotation
    if desc.is_list and get_args(annotation):
        annotation = get_args(annotation)[0]
    if desc.is_path:
        return {"file": "FILE", "dir": "DIR", "directory": "DIR"}.get(str(desc.path_type), "PATH")
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(annotation, "VALUE")


def _names(param: Any) -> Text:
    """`-o, --output PATH`, `--skip-existing / --no-skip-existing` or `INPUTS...`."""
    if isinstance(param, TyperArgument):
        name = str(param.metavar or (param.name or "").upper())
        return Text(name + ("..." if param.nargs == -1 and not name.endswith("...") else ""), "bold cyan")
    text = Text()
    value = _metavar(param)
    for i, group in enumerate((param.opts, param.secondary_opts)):
        if not group:
            continue
        if i:
            text.append(" / ")
        ordered = sorted(group, key=lambda o: o.startswith("--"))  # -o before --output
        for j, opt in enumerate(ordered):
            if j:
                text.append(", ")
            text.append(opt, "bold cyan" if opt.startswith("--") else "bold green")
    if value:
        text.append(" ")
        text.append(value, "yellow")
    return text


def _default(param: Any, ctx: Any) -> str | None:
    """The default as the help shows it, or None when it says nothing (None, "", a flag that is off)."""
    if isinstance(param.show_default, str):
        return param.show_default or None
    if not (param.show_default or ctx.show_default):
        return None
    value = param.get_default(ctx, call=False)
    if callable(value) or value is None:
        return None
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return "on" if value else "off"
        return "on" if value else None
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v.value if isinstance(v, Enum) else v) for v in value)
    return str(value) or None


def _range(param: Any) -> str | None:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None:
        return None
    if low is not None and high is not None:
        return f"{low:g}-{high:g}"
    return f">={low:g}" if low is not None else f"<={high:g}"


def _description(param: Any, ctx: Any) -> Text:
    """The help text, then what Typer knows that the text does not say: default, range, required."""
    raw = " ".join((param.help or "").split())
    raw = re.sub(r"\s*\\?\[default: \]", "", raw)  # an empty default says nothing
    text = markup(raw)
    extras = []
    default = None if "[default:" in raw else _default(param, ctx)
    if default is not None:
        extras.append(f"default: {default}")
    span = _range(param)
    if span is not None and not getattr(param, "count", False):
        extras.append(span)
    envvar = getattr(param, "envvar", None)
    if envvar and getattr(param, "show_envvar", False):
        extras.append(f"env var: {envvar if isinstance(envvar, str) else ', '.join(envvar)}")
    if param.required:
        extras.append("required")
    if extras:
        if text.plain:
            text.append(" ")
        text.append(f"[{'; '.join(extras)}]", "dim")
    return text


def _entries_panel(console: Console, title: str, entries: list[tuple[Text, Text]], names_width: int) -> Panel:
    """One panel of entries: names, then the description wrapped beside (or, when the names are
    wider than the column, below) them."""
    inner = console.width - 4  # the border and one space on each side
    lines: list[Text] = []
    help_width = max(inner - names_width - _GAP, 10)
    indent = " " * (names_width + _GAP)
    for names, description in entries:
        wrapped = list(description.wrap(console, help_width)) if description.plain else []
        if names.cell_len <= names_width:
            first = wrapped.pop(0) if wrapped else Text()
            lines.append(Text.assemble(names, " " * (names_width + _GAP - names.cell_len), first))
        else:
            lines.extend(names.wrap(console, inner))
        lines.extend(Text.assemble(indent, line) for line in wrapped)
    return Panel(Group(*lines), title=title, title_align="left", border_style="dim", expand=True)


def _names_width(console: Console, widths: Iterable[int]) -> int:
    """The names column: as wide as the widest names that fit in it, at most a third of the width
    and never leaving the descriptions less than _MIN_HELP."""
    cap = max(12, min((console.width - 4) // 3, console.width - 4 - _GAP - _MIN_HELP))
    fitting = [w for w in widths if w <= cap]
    return max(fitting, default=cap)


def _console() -> Console:
    width = os.environ.get("TERMINAL_WIDTH")  # Typer's own override of the width
    return Console(width=int(width) if width and width.isdigit() else None, highlight=False)


def render(command: Any, ctx: Any) -> None:
    """Print the help of a command or a group (stdout, as Typer does)."""
    console = _console()
    console.print()
    usage = Text("Usage: ", "bold") + Text(_usage(command, ctx))
    console.print(Padding(usage, (0, 1)))
    if command.help:
        console.print()
        for i, paragraph in enumerate(paragraphs(command.help)):
            if i:
                console.print()
            console.print(Padding(markup(paragraph, "" if i else "bold"), (0, 1)))
    console.print()

    panels: dict[str, list[tuple[Text, Text]]] = {}
    help_entry = None
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        entry = (_names(param), _description(param, ctx))
        if isinstance(param, TyperArgument):
            panels.setdefault(getattr(param, "rich_help_panel", None) or ARGUMENTS, []).append(entry)
        elif "--help" in param.opts:
            help_entry = entry  # last, in the general panel, wherever that stands
        else:
            panels.setdefault(getattr(param, "rich_help_panel", None) or OPTIONS, []).append(entry)
    if help_entry is not None:  # an Options panel holding only --help comes after the others
        panels.setdefault(OPTIONS, []).append(help_entry)

    commands: dict[str, list[tuple[Text, Text]]] = {}
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            summary = sub.short_help or (paragraphs(sub.help or "") or [""])[0]
            panel = getattr(sub, "rich_help_panel", None) or COMMANDS
            commands.setdefault(panel, []).append((Text(name, "bold cyan"), markup(summary)))

    widths = [names.cell_len for entries in panels.values() for names, _ in entries]
    names_width = _names_width(console, widths)
    for title, entries in panels.items():
        console.print(_entries_panel(console, title, entries, names_width))
    if commands:
        widths = [names.cell_len for entries in commands.values() for names, _ in entries]
        command_width = _names_width(console, widths)
        for title, entries in commands.items():
            console.print(_entries_panel(console, title, entries, command_width))
    if command.epilog:
        console.print(Padding(markup(" ".join(command.epilog.split())), (1, 1, 0, 1)))


def _usage(command: Any, ctx: Any) -> str:
    pieces = [ctx.command_path, "[OPTIONS]"]
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            name = _names(param).plain
            pieces.append(name if param.required else f"[{name}]")
    if isinstance(command, TyperGroup):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


class HelpCommand(TyperCommand):
    """A Typer command whose --help is rendered by this module."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        render(self, ctx)


class HelpGroup(TyperGroup):
    """A Typer group whose --help is rendered by this module."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        render(self, ctx)


def use_everywhere(app: typer.Typer) -> None:
    """Give every command and group of `app` (and of the apps added to it) this help. Called once
    the whole tree is registered, so a command added in any module gets it without a decorator."""
    if not isinstance(app.info.cls, type) or app.info.cls is TyperGroup:  # unset: a Default(None)
        app.info.cls = HelpGroup
    for info in app.registered_commands:
        if info.cls is None or info.cls is TyperCommand:
            info.cls = HelpCommand
    for group in app.registered_groups:
        if not isinstance(group.cls, type) or group.cls is TyperGroup:
            group.cls = HelpGroup
        if group.typer_instance is not None:
            use_everywhere(group.typer_instance)
