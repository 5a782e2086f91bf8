"""`completion bash|zsh|fish`: shell completion scripts made from the parser.

The script holds, for every command path ("", "trust", "config trust", …),
the words that may follow it: subcommands and flags. It is generated from
the same argparse tree that parses, so it never falls behind the commands.
"""
import argparse

__all__ = ["SHELLS", "command_words", "script"]

SHELLS = ("bash", "zsh", "fish")


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def command_words(parser, path=()):
    """{path tuple: (subcommand names, flags)} for parser and every command below."""
    sub = _subcommands(parser)
    names = []
    if sub:
        visible = {a.dest for a in sub._choices_actions}
        names = [n for n in sub.choices if n in visible]
    flags = [o for a in parser._actions if a.help != argparse.SUPPRESS
             for o in a.option_strings if o.startswith("--")]
    table = {path: (names, flags)}
    if sub:
        for name, child in sub.choices.items():
            table.update(command_words(child, path + (name,)))
    return table


def _function(prog):
    return "_" + "".join(c if c.isalnum() else "_" for c in prog)


def _bash(prog, table):
    fn = _function(prog)
    cases = "\n".join(f'        "{" ".join(path)}") echo "{" ".join(names + flags)}" ;;'
                      for path, (names, flags) in table.items())
    return f"""# bash completion for {prog}; load with: source <({prog} completion bash)
{fn}_words() {{
    case "$1" in
{cases}
    esac
}}
{fn}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        case " $({fn}_words "$path") " in
            *" $word "*) path="${{path:+$path }}$word" ;;
        esac
    done
    COMPREPLY=($(compgen -W "$({fn}_words "$path")" -- "$cur"))
}}
complete -o default -F {fn} {prog}
"""


def _zsh(prog, table):
    return (f"# zsh completion for {prog}; load with: source <({prog} completion zsh)\n"
            "autoload -U +X bashcompinit && bashcompinit\n"
            + _bash(prog, table).split("\n", 1)[1])


def _fish(prog, table):
    lines = [f"# fish completion for {prog}; load with: {prog} completion fish | source"]
    for path, (names, flags) in table.items():
        if path:
            seen = "; and ".join(f"__fish_seen_subcommand_from {w}" for w in path)
        else:
            seen = "true"
        cond = seen
        if names:
            cond += "; and not __fish_seen_subcommand_from " + " ".join(names)
        for name in names:
            lines.append(f"complete -c {prog} -f -n '{cond}' -a {name}")
        for flag in flags:
            lines.append(f"complete -c {prog} -n '{seen}' -l {flag[2:]}")
    return "\n".join(lines) + "\n"


def script(shell, prog, parser):
    """The completion script for shell."""
    table = command_words(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](prog, table)
