"""The docs say only what exists: links, anchors, `make` targets, `envkit` commands and options.

README.md and every docs/**/*.md page are read as a user would: each relative link must reach a
file (and, for `#anchor`, one of its headings); each `make <target>` quoted in code must be a
Makefile target; each `envkit <cmd> [<sub>] [--option]` quoted in code must resolve in the real
Typer app's click command tree. The site itself must build with `mkdocs build --strict`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Pages other engineers are writing in parallel: linked and in the nav, tolerated while absent.
OPTIONAL_PAGES = frozenset({"docs/training-contract.md", "docs/provisioning-molecule.md"})
# One page per area (docs/<name>.md), besides docs/index.md.
AREA_PAGES = ("doctor", "bench", "training", "images", "provisioning", "matrix", "gpu", "ci", "benchmarks")

# Fenced blocks whose lines are shell commands (others are output, JSON, YAML, ...).
SHELL_LANGS = frozenset({"", "bash", "sh", "shell", "console"})
SEPARATORS = frozenset({"|", "||", "&&", ";", "&", "(", ")"})
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
COMMAND_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class Snippet:
    """A piece of a page: code (a shell line or an inline code span) or prose, with its line."""

    line: int
    text: str


@dataclass(frozen=True)
class Page:
    """One Markdown file split into prose (where links live) and code (where commands live)."""

    path: Path
    prose: list[Snippet]
    code: list[Snippet]

    @property
    def name(self) -> str:
        return self.path.relative_to(ROOT).as_posix() if self.path.is_relative_to(ROOT) else str(self.path)


def parse_page(path: Path) -> Page:
    """Split a Markdown file into prose and shell-code snippets (fenced shell lines, inline spans)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    prose: list[Snippet] = []
    code: list[Snippet] = []
    fence: str | None = None
    lang = ""
    pending = ""  # a shell line continued with a trailing backslash
    pending_line = 0
    for number, line in enumerate(lines, start=1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence, lang = opened.group(2), opened.group(3).lower()
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence, pending = None, ""
                continue
            if lang in SHELL_LANGS:
                text = line.strip()
                text = text[2:] if text.startswith("$ ") else text
                if not pending:
                    pending_line = number
                if text.endswith("\\"):
                    pending += text[:-1] + " "
                    continue
                code.append(Snippet(pending_line, pending + text))
                pending = ""
            continue
        prose.append(Snippet(number, line))
    # Inline code spans may wrap over lines inside a paragraph: scan each paragraph as one text.
    groups: list[list[Snippet]] = []
    for snip in prose:
        if not snip.text.strip():
            continue
        if groups and groups[-1][-1].line == snip.line - 1:
            groups[-1].append(snip)
        else:
            groups.append([snip])
    paragraphs = [Snippet(group[0].line, "\n".join(s.text for s in group)) for group in groups]
    plain: list[Snippet] = []
    for para in paragraphs:
        for match in INLINE_CODE.finditer(para.text):
            line = para.line + para.text.count("\n", 0, match.start())
            code.append(Snippet(line, " ".join(match.group(2).split())))
        plain.append(Snippet(para.line, INLINE_CODE.sub("", para.text)))
    code.sort(key=lambda snip: snip.line)
    return Page(path, plain, code)


# --- links ------------------------------------------------------------------------------------


def links(page: Page) -> Iterator[tuple[int, str]]:
    """Every link target in the page's prose (inline links, images, reference definitions)."""
    for para in page.prose:
        for pattern in (LINK, REF_DEF):
            for match in pattern.finditer(para.text):
                yield para.line + para.text.count("\n", 0, match.start()), match.group(1)


def heading_ids(path: Path) -> set[str]:
    """The anchors MkDocs gives a page's headings (Python-Markdown's toc, as mkdocs.yml sets it up)."""
    import markdown

    md = markdown.Markdown(extensions=["toc", "attr_list", "tables", "fenced_code"])
    md.convert(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def walk(tokens: list[dict[str, Any]]) -> None:
        for token in tokens:
            found.add(token["id"])
            walk(token["children"])

    walk(md.toc_tokens)
    # attr_list ids and explicit <a id="..."> / <a name="..."> anchors count as well
    found.update(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", path.read_text(encoding="utf-8")))
    return found


def check_links(page: Page, root: Path = ROOT) -> list[str]:
    """Problems with the page's relative links: a missing file, or an anchor no heading has."""
    problems = []
    for line, target in links(page):
        if EXTERNAL.match(target):
            continue  # no network here; external links are the reader's to follow
        file_part, _, anchor = target.partition("#")
        dest = (page.path.parent / file_part).resolve() if file_part else page.path
        where = f"{page.name}:{line}: link {target!r}"
        rel = dest.relative_to(root).as_posix() if dest.is_relative_to(root) else str(dest)
        if not dest.exists():
            if rel in OPTIONAL_PAGES:
                continue  # another engineer's page, not written yet
            problems.append(f"{where}: {rel} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in heading_ids(dest):
            problems.append(f"{where}: {rel} has no heading with anchor #{anchor}")
    return problems


# --- commands -----------------------------------------------------------------------------------


def command_lines(snippet: Snippet) -> Iterator[list[str]]:
    """The simple commands of one shell line: tokens split at |, &&, ;, with comments dropped."""
    try:
        lex = shlex.shlex(snippet.text, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        tokens = list(lex)
    except ValueError:  # unbalanced quotes in prose-like code: fall back to plain words
        tokens = snippet.text.split("#", 1)[0].split()
    current: list[str] = []
    for token in tokens:
        if token in SEPARATORS:
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


def command_position(tokens: list[str]) -> list[str]:
    """Drop leading `VAR=value` assignments and `sudo`, so tokens[0] is the program run."""
    i = 0
    while i < len(tokens) and (ENV_ASSIGN.match(tokens[i]) or tokens[i] == "sudo"):
        i += 1
    return tokens[i:]


def makefile_targets(makefile: Path = ROOT / "Makefile") -> set[str]:
    """The explicit targets of a Makefile (rules, not variable assignments)."""
    targets = set()
    for line in makefile.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if match and not line.startswith((".", "\t")):
            targets.update(match.group(1).split())
    return targets


def check_make(page: Page, targets: set[str]) -> list[str]:
    """Problems with `make <target>` quoted in the page's code: a target the Makefile lacks."""
    problems = []
    for snippet in page.code:
        for tokens in command_lines(snippet):
            tokens = command_position(tokens)
            if not tokens or Path(tokens[0]).name != "make":
                continue
            for arg in tokens[1:]:
                if arg.startswith("-") or "=" in arg or arg in {"...", "…"}:
                    continue
                if arg not in targets:
                    problems.append(f"{page.name}:{snippet.line}: `make {arg}`: no such Makefile target")
    return problems


def _context(command: Any, parent: Any, name: str) -> Any:
    # Not resilient_parsing: a lazy group may answer a placeholder then, and we want the real tree.
    return command.context_class(command, parent=parent, info_name=name)


def command_tree(command: Any, ctx: Any) -> dict[str, Any]:
    """A click command as plain data: {"options": {name: takes_value}, "commands": {name: tree} | None}."""
    options = {}
    for param in command.get_params(ctx):  # --help included
        if getattr(param, "param_type_name", "") == "option":
            takes_value = not (param.is_flag or param.count) and param.nargs != 0
            options.update(dict.fromkeys((*param.opts, *param.secondary_opts), takes_value))
    tree: dict[str, Any] = {"options": options, "commands": None}
    if hasattr(command, "list_commands"):  # a group (Typer's groups are duck-typed click groups)
        tree["commands"] = {}
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                tree["commands"][name] = command_tree(sub, _context(sub, ctx, name))
    return tree


def dump_cli_tree() -> None:
    """Print the real `envkit` command tree as JSON (run in a child: mounting `train` imports training)."""
    import typer.main

    from envkit.cli import app

    root = typer.main.get_command(app)
    print(json.dumps(command_tree(root, _context(root, None, "envkit"))))


@functools.cache
def cli_tree() -> dict[str, Any]:
    """The command tree of the Typer app `envkit.cli.app`, read in a child process.

    A child keeps this test from importing the training package into pytest's process, where a test
    that asserts `envkit doctor` never imports it would then see it.
    """
    code = "from tests.unit.test_docs import dump_cli_tree; dump_cli_tree()"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def check_envkit_argv(argv: list[str], tree: dict[str, Any]) -> str | None:
    """Walk `envkit ARGV` down the command tree; the first unknown command or option, else None."""
    node, path = tree, ["envkit"]
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--" or token in {"...", "…"} or token.startswith(("$", "<", "[")):
            break  # end of options, an ellipsis or a placeholder: nothing more to resolve
        if token.startswith("-") and len(token) > 1:
            name = token.split("=", 1)[0]
            if name not in node["options"]:
                return f"`{' '.join(path)}` has no option {name}"
            if "=" not in token and node["options"][name]:
                i += 1  # its value
            continue
        if node["commands"] is not None:
            if not COMMAND_NAME.match(token):
                break  # `envkit doctor: ...` is quoted output or prose, not an invocation
            if token not in node["commands"]:
                return f"`{' '.join(path)}` has no sub-command {token!r}"
            node = node["commands"][token]
            path.append(token)
        # else: a positional argument of a leaf command; options after it still belong to it
    return None


def envkit_invocations(page: Page) -> Iterator[tuple[int, list[str]]]:
    """`envkit ...` argv quoted in the page's code (also `python -m envkit`, `.venv/bin/envkit`).

    `python -m training ARGS` (what torchrun starts) is `envkit train ARGS`, so it is checked as that.
    """
    for snippet in page.code:
        for tokens in command_lines(snippet):
            for i, token in enumerate(tokens):
                if token == "envkit" or token.endswith("/bin/envkit"):
                    yield snippet.line, tokens[i + 1 :]
                    break
                if token == "training" and i > 0 and tokens[i - 1] == "-m":
                    yield snippet.line, ["train", *tokens[i + 1 :]]
                    break


def check_envkit(page: Page, tree: dict[str, Any]) -> list[str]:
    """Problems with `envkit <cmd> [<sub>] [--option]` quoted in the page: what does not resolve."""
    problems = []
    for line, argv in envkit_invocations(page):
        problem = check_envkit_argv(argv, tree)
        if problem:
            problems.append(f"{page.name}:{line}: `envkit {' '.join(argv)}`: {problem}")
    return problems


# --- the tests --------------------------------------------------------------------------------


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.fixture(scope="module")
def pages() -> list[Page]:
    return [parse_page(path) for path in doc_pages()]


def test_the_docs_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in doc_pages()}
    for page in ("README.md", "docs/index.md", *(f"docs/{name}.md" for name in AREA_PAGES)):
        assert page in names


def test_every_relative_link_resolves(pages: list[Page]) -> None:
    assert sum(1 for page in pages for _ in links(page)) >= 30  # the parser still finds the links
    problems = [problem for page in pages for problem in check_links(page)]
    assert not problems, "\n".join(problems)


def test_every_quoted_make_target_exists(pages: list[Page]) -> None:
    targets = makefile_targets()
    assert {"demo", "test", "help"} <= targets
    problems = [problem for page in pages for problem in check_make(page, targets)]
    assert not problems, "\n".join(problems)


def test_every_quoted_envkit_command_exists(pages: list[Page]) -> None:
    tree = cli_tree()
    assert sum(1 for page in pages for _ in envkit_invocations(page)) >= 50  # the parser still finds them
    problems = [problem for page in pages for problem in check_envkit(page, tree)]
    assert not problems, "\n".join(problems)


def test_the_checker_flags_bad_links_and_commands(tmp_path: Path) -> None:
    """The checks above could pass by finding nothing: prove each one catches a planted mistake."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    (tmp_path / "page.md").write_text(
        "# Page\n\n"
        "Good: [other](other.md), [section](other.md#a-section), [here](#page), [web](https://x.org/y).\n"
        "Bad: [gone](missing.md), [anchor](other.md#no-such-section).\n\n"
        "Run `make test`, then `make no-such-target` and `envkit doctor --json` and\n"
        "`envkit no-such-command`. A drained node reads `envkit doctor: 2 failed` (output).\n\n"
        "```bash\n"
        "envkit bench matmul -b numpy --device cpu --out x.json   # fine\n"
        "envkit doctor --no-such-option\n"
        "make demo && python -m envkit bench nosub\n"
        "torchrun --nproc-per-node=2 -m training pretrainn --preset tiny\n"
        "envkit train cycle --preset tiny \\\n"
        "    --bad-continued-option\n"
        "```\n\n"
        "```text\nenvkit not-a-command-in-output\n```\n",
        encoding="utf-8",
    )
    page = parse_page(tmp_path / "page.md")

    link_problems = check_links(page, root=tmp_path)
    assert len(link_problems) == 2, link_problems
    assert "missing.md does not exist" in link_problems[0]
    assert "no heading with anchor #no-such-section" in link_problems[1]

    make_problems = check_make(page, makefile_targets())
    assert [p.split(": ", 1)[1] for p in make_problems] == ["`make no-such-target`: no such Makefile target"]

    envkit_problems = check_envkit(page, cli_tree())
    assert len(envkit_problems) == 5, envkit_problems
    assert "has no sub-command 'no-such-command'" in envkit_problems[0]
    assert "`envkit doctor` has no option --no-such-option" in envkit_problems[1]
    assert "`envkit bench` has no sub-command 'nosub'" in envkit_problems[2]
    assert "`envkit train` has no sub-command 'pretrainn'" in envkit_problems[3]
    assert "`envkit train cycle` has no option --bad-continued-option" in envkit_problems[4]
    assert envkit_problems[4].startswith(f"{page.name}:14:")  # the continued line's first line


def _mkdocs_tree(tmp_path: Path) -> Path:
    """A copy of mkdocs.yml + docs/ with a stub for each optional page not written yet."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    for page in OPTIONAL_PAGES:
        stub = tmp_path / page
        if not stub.exists():
            stub.write_text(f"# {stub.stem}\n\nBeing written.\n", encoding="utf-8")
    config["docs_dir"] = str(docs)
    config["site_dir"] = str(tmp_path / "site")
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _mkdocs_build(config: Path) -> subprocess.CompletedProcess[str]:
    # No --quiet: it hides the warnings that --strict counts, and the build then passes regardless.
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_mkdocs_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra")
    pytest.importorskip("material", reason="mkdocs-material is in the dev extra")
    run = _mkdocs_build(_mkdocs_tree(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    for page in AREA_PAGES:
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_mkdocs_strict_build_fails_on_a_broken_anchor(tmp_path: Path) -> None:
    """The strict build is a real check: a planted dangling anchor makes it fail."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra")
    pytest.importorskip("material", reason="mkdocs-material is in the dev extra")
    config = _mkdocs_tree(tmp_path)
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [nowhere](doctor.md#no-such-anchor-here).\n")
    run = _mkdocs_build(config)
    assert run.returncode != 0
    assert "no-such-anchor-here" in run.stdout + run.stderr


def test_the_readme_stays_short() -> None:
    """A newcomer's page, one to three screens; the reference lives in docs/."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move reference material into docs/"
