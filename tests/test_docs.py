"""The docs stay true: their `dlm` commands parse, their links resolve, the README stays short.

Files: README.md and docs/*.md. Nothing is run and torch is not imported (the test takes well under a second).

Commands are read from two places:
* fenced code blocks labelled bash, sh, shell, zsh, console or unlabelled (``text`` and ``python`` blocks
  are output and code, not shell). A logical line joins `\\` continuations and drops `# comments`; it is
  split like a shell does (shlex: quotes, `&&`, `||`, `;`, `|`, redirections; `$(...)` is one word). Each
  element of a chain is a command: `dlm ARGS`, `python -m dlm ARGS`, `torchrun ... -m dlm ARGS` (also under
  `srun`), after any `VAR=value` prefixes. In console blocks only `$ ` lines are commands.
  These must be complete: they parse as `dlm.cli.main` would parse them (`dlm.cli.parse_args`).
  A `|` after a dlm command must feed a real filter (head, grep, tee, ...): `x=a|b` unquoted in a
  block is a shell pipe into a program `b`, so it is an error.
* inline code spans (also across a line break, `\\|` in tables read as `|`) that start with such a
  command. A span with usage syntax outside quotes (`[optional]`, `a|b`, `(x | y)`, `<arg>`, `...`, `…`)
  is a usage line, not a command: only its subcommand, its `--flags` and its dotted `section.key=`
  names are checked. Other spans are commands, but may name a command or a flag in passing: missing
  required arguments (`dlm eval --l2r`), a final flag without its value (`dlm chat --once`) and the
  bare program (`python -m dlm`) are accepted.

Placeholders: an UPPERCASE word (N, RUN, STEPS, AR_RUN) or a shell variable ($N, ${N}) stands for any
value. To argparse it is a string like any other; where a flag needs a number or one of a few choices
(`--steps N`, `--sampler NAME`), a placeholder is replaced by `1` or by the first choice and parsed
again. Flags must be spelled in full (argparse also takes unambiguous prefixes; the docs should not).

Beyond argparse, what `dlm` would reject at once without running anything: every `key=value` override
(and `--grid KEY=V1,V2`, `--param KEY=...`) of train/finetune/study/sweep names a config field and has a
value of its type (`dlm.config.apply_overrides`; allowed ranges and choices depend on the preset and the
other settings, and are left to `dlm` itself), and `--preset` / `presets --show` name a preset (or a .json
file).

Links: every relative `[text](path)`, `![alt](path)` and `[ref]: path` outside code points to an existing
file, relative to the markdown file; a `#anchor` into a markdown file must be one of its headings'
GitHub slugs (lower case, punctuation other than `-` and `_` removed, each space a `-`, `-1`, `-2` for
repeats) or an explicit `id=`/`name=` anchor. HTML comments are not read.

README.md: at most 2,000 words (as `wc -w` counts), and every `dlm` subcommand appears in one of its commands.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from dlm.cli import build_parser, parse_args
from dlm.config import RunConfig, apply_overrides
from dlm.errors import DlmError
from dlm.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_WORDS = 2000

SHELL_LANGS = {"", "bash", "sh", "shell", "zsh", "console", "shell-session"}
FILTERS = {"head", "tail", "grep", "tee", "less", "more", "jq", "python", "python3", "sort", "uniq", "wc", "cat",
           "sed", "awk", "cut", "tr", "column", "xargs"}
LAUNCHERS = {"srun", "env", "nohup", "time", "exec", "sudo", "uv", "uvx", "mpirun"}
PLACEHOLDER = re.compile(r"\$\{?\w+\}?|[A-Z][A-Z0-9_]*")
STARTS_WITH_DLM = re.compile(r"\s*(?:[A-Za-z_]\w*=\S*\s+)*(?:\S*torchrun\s.*?-m\s+dlm|python3?\s+-m\s+dlm|dlm)(?:\s|$)")
USAGE_SYNTAX = re.compile(r"[][|()<>]|\.\.\.|…")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")  # also indented, inside list items
SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", flags=re.DOTALL)  # not across paragraphs


@dataclass
class Command:
    line: int
    text: str
    argv: list[str]  # the arguments after `dlm`
    kind: str  # "block" (complete), "inline" (may be partial) or "usage" (a synopsis)


# --- markdown ------------------------------------------------------------------------------------------------


def fenced_blocks(lines: list[str]) -> list[tuple[int, str, list[str]]]:
    """(line number of the first content line, language, content lines) of each fenced block."""
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, start = m.group(1), i + 1
        closing = re.compile(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(start, len(lines)) if closing.match(lines[j])), len(lines))
        blocks.append((start + 1, m.group(2).lower(), lines[start:end]))
        i = end + 1
    return blocks


def prose(text: str, keep_spans: bool = False) -> str:
    """text with fenced blocks, HTML comments and (unless keep_spans) code spans blanked, line numbers kept."""
    text = re.sub(r"<!--.*?-->", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.DOTALL)
    lines = text.split("\n")
    for start, _, content in fenced_blocks(lines):
        for j in range(start - 2, start - 1 + len(content) + 1):
            if j < len(lines):
                lines[j] = ""
    out = "\n".join(lines)
    if not keep_spans:
        out = SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), out)
    return out


def code_spans(text: str) -> list[tuple[int, str]]:
    """(line, content) of the inline code spans outside fenced blocks; a line break in a span is a space."""
    body = prose(text, keep_spans=True)
    return [(body.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split()))
            for m in SPAN.finditer(body)]


# --- shell ---------------------------------------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """The line up to an unquoted `#` that starts a word (as bash reads it)."""
    quote, escaped = "", False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t;&|("):
            return line[:i]
    return line


def logical_lines(start: int, lang: str, content: list[str]) -> list[tuple[int, str]]:
    """(line, command line) of a shell block: comments dropped, `\\` continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(content):
        line = raw
        if pending is None and lang == "console":
            if not raw.startswith("$ "):
                continue
            line = raw[2:]
        line = strip_comment(line).rstrip()
        first, text = pending if pending else (start + offset, "")
        text = f"{text} {line.removesuffix(chr(92)).strip()}".strip()
        pending = (first, text) if line.endswith("\\") else None
        if pending is None and text:
            out.append((first, text))
    if pending:
        out.append(pending)
    return out


def dlm_argv(words: list[str]) -> list[str] | None:
    """The arguments after `dlm` if this simple command runs dlm (else None)."""
    while words and re.match(r"[A-Za-z_]\w*=", words[0]):
        words = words[1:]
    if not words:
        return None
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "dlm":
            return words[i + 2:]
    if words[0] == "dlm" or words[0].endswith("/dlm"):
        return words[1:]
    if words[0] in LAUNCHERS and "dlm" in words:
        return words[words.index("dlm") + 1:]
    return None


def shell_commands(line: str) -> tuple[list[list[str]], list[str]]:
    """The dlm argv of every command in a shell line, and the problems of the line as shell."""
    lexer = shlex.shlex(re.sub(r"\$\([^()]*\)", "$CMD", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        tokens = list(lexer)
    except ValueError as e:
        return [], [f"not valid shell ({e})"]
    chain: list[tuple[str, list[str]]] = [("", [])]  # (operator before it, words)
    problems: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.strip("()") == "":
            pass  # a subshell's parentheses
        elif set(token) <= set("<>&") and token not in ("&", "&&"):  # a redirection and its target
            if i + 1 == len(tokens) or set(tokens[i + 1]) <= set("();<>|&"):
                problems.append(f"`{token}` redirects to nothing (an unquoted <placeholder>?)")
            i += 1
        elif set(token) <= set(";&|"):
            chain.append((token, []))
        else:
            chain[-1][1].append(token)
        i += 1
    commands = []
    for k, (op, words) in enumerate(chain):
        argv = dlm_argv(words)
        if argv is not None:
            commands.append(argv)
        elif op in ("|", "|&") and words and words[0] not in FILTERS and dlm_argv(chain[k - 1][1]) is not None:
            problems.append(f"`|` pipes dlm into {' '.join(words)!r}, not a program: quote the value (a|b)")
    return commands, problems


def find_commands(path: Path) -> tuple[list[Command], list[str]]:
    """Every dlm command of a markdown file, and the shell problems met on the way ("line: message")."""
    text = path.read_text(encoding="utf-8")
    commands, problems = [], []
    for start, lang, content in fenced_blocks(text.split("\n")):
        if lang not in SHELL_LANGS:
            continue
        for line_no, line in logical_lines(start, lang, content):
            if not re.search(r"(^|[\s;&|(])dlm(\s|$)", line):
                continue
            argvs, shell = shell_commands(line)
            problems += [f"{line_no}: {line}\n    → {p}" for p in shell]
            commands += [Command(line_no, line, argv, "block") for argv in argvs]
    for line_no, span in code_spans(text):
        span = span.replace("\\|", "|")
        if not STARTS_WITH_DLM.match(span):
            continue
        if USAGE_SYNTAX.search(re.sub(r"'[^']*'|\"[^\"]*\"", "", span)):
            words = span.split()
            at = next(i for i, w in enumerate(words) if w == "dlm") + 1
            commands.append(Command(line_no, span, words[at:], "usage"))
            continue
        argvs, shell = shell_commands(span)
        problems += [f"{line_no}: {span}\n    → {p}" for p in shell]
        commands += [Command(line_no, span, argv, "inline") for argv in argvs]
    return commands, problems


# --- checking --------------------------------------------------------------------------------------------------


@functools.cache
def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def config_problem(key_value: str, key_only: bool = False) -> str | None:
    """Why `dlm` would refuse this override (None if it would take it); a placeholder value fits any type."""
    key, _, value = key_value.partition("=")
    candidates = [value] + (["1", "true", "x"] if key_only or PLACEHOLDER.fullmatch(value) else [])
    errors = []
    for candidate in candidates:
        try:
            apply_overrides(RunConfig(), [f"{key}={candidate}"])
            return None
        except DlmError as e:
            errors.append(str(e))
    return errors[0]


def preset_problem(name: str | None) -> str | None:
    if name is None or name in PRESETS or name.endswith(".json") or PLACEHOLDER.fullmatch(name):
        return None
    return f"unknown preset {name!r}; presets: {', '.join(PRESETS)}"


def semantic_problems(args: argparse.Namespace) -> list[str]:
    """What dlm would reject before running: bad config keys or values, unknown presets."""
    problems = [config_problem(o) for o in getattr(args, "overrides", None) or []]
    for grid in getattr(args, "grid", None) or []:
        key, _, values = grid.partition("=")
        problems += [config_problem(f"{key}={v}") for v in values.split(",")]
    problems += [config_problem(p, key_only=True) for p in getattr(args, "param", None) or []]
    problems += [preset_problem(getattr(args, "preset", None)), preset_problem(getattr(args, "show", None))]
    return [p for p in problems if p]


def with_placeholder_filled(argv: list[str], message: str, partial: bool) -> list[str] | None:
    """argv with the placeholder argparse tripped on replaced by a valid value (None: not a placeholder)."""
    m = re.search(r"argument (\S+): invalid (?:\w+ value|choice): '([^']*)'(?: \(choose from (.*)\))?", message)
    choices = [c.strip(" '\"") for c in m.group(3).split(",")] if m and m.group(3) else []
    if m and m.group(1) != "COMMAND" and PLACEHOLDER.fullmatch(m.group(2)) and m.group(2).lower() not in choices:
        value = choices[0] if choices else "1"
        i = next((i for i, a in enumerate(argv) if a == m.group(2) or a.endswith("=" + m.group(2))), None)
        return None if i is None else [*argv[:i], argv[i][: len(argv[i]) - len(m.group(2))] + value, *argv[i + 1:]]
    m = re.search(r"the following arguments are required: (.*)", message)
    if m and partial:
        # argparse names an optional key=value list beside a missing positional: it is not missing
        missing = [name.strip() for name in m.group(1).split(",") if "=" not in name]
        return argv + [w for name in missing for w in ([name, "VALUE"] if name.startswith("-") else ["VALUE"])]
    m = re.search(r"argument (\S+): expected one argument", message)
    if m and partial and argv and argv[-1] in m.group(1).split("/"):
        return [*argv, "VALUE"]
    return None


def argparse_problem(argv: list[str], partial: bool) -> str | None:
    """argparse's complaint about `dlm ARGV`, after the placeholder rules (None when it parses)."""
    if partial and not argv:
        return None  # `dlm` or `python -m dlm` named in passing
    for _ in range(len(argv) + 4):
        err = io.StringIO()
        try:
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                args = parse_args(argv)
        except SystemExit as e:
            if e.code == 0:  # --help, --version
                return None
            message = err.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
            retry = with_placeholder_filled(argv, message, partial)
            if retry is None:
                return message
            argv = retry
            continue
        options = subcommands()[args.command]._option_string_actions
        abbreviated = [a.split("=")[0] for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in options]
        if abbreviated:
            return f"abbreviated flag(s) {', '.join(abbreviated)}: spell them in full"
        return "; ".join(semantic_problems(args)) or None
    return message


def usage_problem(argv: list[str]) -> str | None:
    """What is wrong with a synopsis such as `dlm train [--preset NAME] [key=value ...]`."""
    if not argv or argv[0] in ("...", "…"):
        return None
    parsers = subcommands()
    if argv[0] not in parsers:
        return f"unknown command {argv[0]!r}; commands: {', '.join(parsers)}"
    rest = re.sub(r"'[^']*'|\"[^\"]*\"", "", " ".join(argv[1:]))
    options = parsers[argv[0]]._option_string_actions
    unknown = [f for f in re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", rest) if f not in options]
    if unknown:
        return f"{argv[0]} has no flag(s) {', '.join(dict.fromkeys(unknown))}"
    keys = re.findall(r"(?<![\w.-])([a-z_]+\.[a-z_]\w*)=", rest)
    return "; ".join(p for p in (config_problem(f"{k}=", key_only=True) for k in keys) if p) or None


def command_problems(path: Path) -> list[str]:
    commands, problems = find_commands(path)
    for c in commands:
        problem = usage_problem(c.argv) if c.kind == "usage" else argparse_problem(c.argv, c.kind == "inline")
        if problem:
            problems.append(f"{c.line}: {c.text}\n    → {problem}")
    return sorted(problems, key=lambda p: int(p.split(":")[0]))


# --- links ---------------------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lower case, punctuation but `-`/`_` dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images → their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    parts = re.split(r"(`+[^`]*`+)", text)  # emphasis marks go, code keeps its underscores
    text = "".join(p if p.startswith("`") else re.sub(r"(?<!\w)_+|_+(?!\w)", "", p) for p in parts)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    lines = prose(path.read_text(encoding="utf-8"), keep_spans=True).split("\n")
    headings = []
    for i, line in enumerate(lines):
        m = re.match(r" {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if m:
            headings.append(m.group(1))
        elif i and re.match(r" {0,3}(=+|-+)\s*$", line) and lines[i - 1].strip() and "|" not in lines[i - 1] \
                and not re.match(r"\s*([-*+]|\d+[.)])\s", lines[i - 1]):  # a paragraph's line, not a list's
            headings.append(lines[i - 1].strip())
    found: set[str] = set(re.findall(r"(?:id|name)=[\"']([^\"']+)[\"']", "\n".join(lines)))
    for heading in headings:
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def link_problems(path: Path) -> list[str]:
    body = prose(path.read_text(encoding="utf-8"))
    targets = [(m.start(), m.group(1)) for m in re.finditer(
        r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\"|\s+'[^']*')?\s*\)", body)]
    targets += [(m.start(), m.group(1)) for m in re.finditer(r"(?m)^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)", body)]
    targets += [(m.start(), m.group(1)) for m in re.finditer(r"(?:src|href)=[\"']([^\"']+)[\"']", body)]
    problems = []
    for at, target in sorted(targets):
        if re.match(r"[a-zA-Z][\w+.-]*:|//", target):
            continue  # http:, https:, mailto:, ...
        file, _, anchor = unquote(target).partition("#")
        resolved = (path.parent / file).resolve() if file else path
        line = body.count("\n", 0, at) + 1
        if not resolved.exists():
            problems.append(f"{line}: {target} → no such file {os.path.relpath(resolved, ROOT)}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{line}: {target} → {resolved.name} has no heading with anchor #{anchor}")
    return problems


# --- the tests -----------------------------------------------------------------------------------------------


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_documented_commands_parse(path: Path) -> None:
    problems = command_problems(path)
    assert not problems, f"{doc_id(path)}: {len(problems)} command(s) dlm would refuse:\n" + "\n".join(
        f"{doc_id(path)}:{p}" for p in problems)


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_links_resolve(path: Path) -> None:
    problems = link_problems(path)
    assert not problems, f"{doc_id(path)}: broken links:\n" + "\n".join(f"{doc_id(path)}:{p}" for p in problems)


def test_readme_is_short() -> None:
    words = len(README.read_text(encoding="utf-8").split())  # as `wc -w` counts
    assert words <= README_MAX_WORDS, f"README.md has {words} words; keep it to {README_MAX_WORDS} (detail: docs/)"


def test_readme_names_every_command() -> None:
    named = {c.argv[0] for c in find_commands(README)[0] if c.argv}
    missing = sorted(set(subcommands()) - named)
    assert not missing, f"README.md shows no `dlm {'`, `dlm '.join(missing)}` command"


# --- the checker itself: what it must catch and what it must let through -----------------------------------


@pytest.mark.parametrize("line, wanted", [
    ("dlm train --steps 10", "unrecognized arguments: --steps"),
    ("dlm train --out runs/x train.optimizer=adamw|muon", "not a program"),
    ("dlm sample --ckpt RUN --length many", "invalid int value: 'many'"),
    ("dlm eval --split test --ckpt r", "invalid choice: 'test'"),
    ("dlm eval --split VAL --ckpt r", "invalid choice: 'VAL'"),  # a real value in capitals, not a placeholder
    ("dlm train model.n_layers=3", "unknown config key"),
    ("dlm train model.n_layer=three", "expected int"),
    ("dlm train --preset gpt-9", "unknown preset"),
    ("dlm train --max-step 5", "abbreviated"),
    ("dlm sample --ckpt <run>", "redirects to nothing"),
    ("dlm eval", "required: --ckpt"),
])
def test_the_checker_catches(line: str, wanted: str) -> None:
    argvs, problems = shell_commands(line)
    problems += [p for argv in argvs if (p := argparse_problem(argv, partial=False))]
    assert any(wanted in p for p in problems), problems


@pytest.mark.parametrize("line", [
    "DLM_TINYSHAKESPEARE=x.txt dlm train --out r --max-steps N max_steps=$STEPS lr=3e-4  # note",
    "pip install -e . && dlm train; dlm sample --ckpt RUN --steps N --sampler NAME | head -n 5",
    "srun torchrun --nnodes \"$N\" --rdzv_endpoint \"$(host):29500\" -m dlm train --preset tiny --resume",
    "python -m dlm study --out S --grid train.lr=3e-3,5e-3 --budget-tokens 1e6 diffusion.weighting=flat",
    "dlm sample --ckpt r --template \"To be, [MASK*40] # not a comment\" --help",
    "dlm sweep --out s --param train.lr=log:1e-4:1e-2 --budget-time 60 --preset runs/best.json",
])
def test_the_checker_accepts(line: str) -> None:
    argvs, problems = shell_commands(strip_comment(line))
    assert argvs and not problems + [p for argv in argvs if (p := argparse_problem(argv, partial=False))]


def test_inline_spans_and_usage_lines(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("Use `python -m dlm`, `dlm eval --l2r` or `dlm chat --once`;\n"
                   "`dlm train [--preset NAME] [--objective mdlm\\|ar]`\n"
                   "and `dlm sample --ckpt RUN\n--length N`, not `dlm train [--bogus]` or `dlm eval --spl val`.\n"
                   "```text\ndlm train --bogus\n```\n"  # output, not commands
                   "```console\n$ dlm train --out r \\\n    --bogus\ndlm train --bogus  (output)\n```\n",
                   encoding="utf-8")
    problems = command_problems(doc)
    assert [p.split(":")[0] for p in problems] == ["4", "4", "9"], problems
    assert "no flag(s) --bogus" in problems[0] and "abbreviated" in problems[1] and "--bogus" in problems[2]


def test_links_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Set-up: two `dlm_x` commands\n\n## Set-up: two `dlm_x` commands\n"
                                   "Speed *and* memory\n---\n", encoding="utf-8")
    assert anchors(tmp_path / "a.md") == {"set-up-two-dlm_x-commands", "set-up-two-dlm_x-commands-1",
                                          "speed-and-memory"}
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](a.md#speed-and-memory) ![x](missing.png) [bad](a.md#speed) [web](https://x.org/y)\n"
                   "`[not a link](nowhere.md)`\n[self](#top)\n\n# Top\n", encoding="utf-8")
    problems = link_problems(doc)
    assert len(problems) == 2 and "missing.png" in problems[0] and "#speed" in problems[1], problems
