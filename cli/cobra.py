"""argparse with the help layout of cobra-based tools (`amc`, `aar`, `lxc`).

Operators know these commands from the Go tools they mirror, and the operator
guide prints `aar trust --help` in cobra's layout; argparse's own layout differs
in every section, so the help text is composed here from the parser's actions:

    <description>

    Usage:
      <command> [command]            or  <command> [ARGS] [flags]

    Available Commands:
      <name padded to 11> <help>

    Flags:
      -h, --help   help for <name>

    Use "<command> [command] --help" for more information about a command.

    Examples:                        (the parser's epilog, when it has one)
      <command lines>

Usage errors keep argparse's exit status 2, say what to run for help, and a
mistyped command gets "Did you mean …?". `help COMMAND…` and `completion
bash|zsh|fish` are the cobra commands every cobra tool has.
"""
import argparse
import contextlib
import difflib
import re
import sys

from cli.completion import SHELLS, script

__all__ = ["CobraParser", "add_help_command", "add_completion_command"]

_INVALID_CHOICE = re.compile(r"invalid choice: '?([^'\s]+)'?")


class CobraParser(argparse.ArgumentParser):
    """An ArgumentParser whose --help and errors look like cobra's."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("add_help", False)
        super().__init__(*args, **kwargs)
        self.add_argument("-h", "--help", action="help", default=argparse.SUPPRESS,
                          help=f"help for {self.prog.split()[-1]}")

    def _subcommands(self):
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
        return None

    def format_usage(self):
        return "Usage:\n  " + self._usage_line() + "\n"

    def _usage_line(self):
        if self._subcommands():
            return f"{self.prog} [command]"
        words = [self.prog]
        for action in self._positionals._group_actions:
            name = action.metavar or action.dest.upper()
            words.append(f"[{name}]" if action.nargs in ("?", "*") else name)
        if any(a.option_strings for a in self._actions):
            words.append("[flags]")
        return " ".join(words)

    def format_help(self):
        out = []
        if self.description:
            out += [self.description, ""]
        out.append(self.format_usage())
        if self.epilog:
            out += [self.epilog, ""]
        sub = self._subcommands()
        if sub:
            rows = [(a.dest, a.help or "") for a in sub._choices_actions]
            pad = max([11] + [len(n) for n, _ in rows])
            out.append("Available Commands:")
            out += [f"  {n.ljust(pad)} {h}".rstrip() for n, h in rows]
            out.append("")
        flags = [a for a in self._actions if a.option_strings and a.help != argparse.SUPPRESS]
        if flags:
            lines = [(_flag_words(a), a.help or "") for a in flags]
            width = max(len(w) for w, _ in lines)
            out.append("Flags:")
            out += [f"{w.ljust(width)}   {h}".rstrip() for w, h in lines]
            out.append("")
        if sub:
            out.append(f'Use "{self.prog} [command] --help" for more information about a command.')
        return "\n".join(out) + "\n"

    def parse(self, argv, out, err):
        """parse_args, but --help, --version and usage errors write to out and
        err and come back as an exit status (an int) instead of SystemExit."""
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return self.parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2

    def error(self, message):
        hint = ""
        match = _INVALID_CHOICE.search(message)
        if match:
            choices = [c for a in self._actions if a.choices for c in a.choices]
            close = difflib.get_close_matches(match.group(1), choices, n=3, cutoff=0.6)
            if close:
                hint = "\nDid you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        self.exit(2, f"Error: {message}{hint}\nRun '{self.prog} --help' for usage.\n")

    def print_help(self, file=None):
        (file or sys.stdout).write(self.format_help())


def _flag_words(action):
    shorts = [o for o in action.option_strings if not o.startswith("--")]
    longs = [o for o in action.option_strings if o.startswith("--")]
    words = ", ".join(shorts + longs)
    if not shorts:
        words = "    " + words
    if action.nargs != 0:
        words += " " + (action.metavar or action.dest.split(".")[-1].lower())
    return "  " + words


def _walk(parser, words):
    """The parser of the command words name (['trust', 'add']), or None."""
    for word in words:
        sub = parser._subcommands() if isinstance(parser, CobraParser) else None
        if sub is None or word not in sub.choices:
            return None
        parser = sub.choices[word]
    return parser


def add_help_command(cmds, root):
    """`PROG help [COMMAND…]`: the same text as `PROG COMMAND… --help`."""
    helper = cmds.add_parser("help", help="Help about any command",
                             description="Help about any command")
    helper.add_argument("topic", nargs="*", metavar="COMMAND")

    def run(args, out):
        parser = _walk(root, args.topic)
        if parser is None:
            root.error(f"unknown help topic {' '.join(args.topic)!r}")
        out.write(parser.format_help())
        return 0
    helper.set_defaults(cobra=run, handler=None, help_parser=helper)


def add_completion_command(cmds, root):
    """`PROG completion bash|zsh|fish`: print a completion script."""
    prog = root.prog
    comp = cmds.add_parser(
        "completion", help="Generate the autocompletion script for the specified shell",
        description="Generate the autocompletion script for the specified shell",
        epilog=f"Examples:\n  source <({prog} completion bash)\n"
               f"  {prog} completion bash | sudo tee /etc/bash_completion.d/{prog}\n"
               f"  {prog} completion fish | source")
    comp.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")

    def run(args, out):
        out.write(script(args.shell, prog, root))
        return 0
    comp.set_defaults(cobra=run, handler=None, help_parser=comp)
