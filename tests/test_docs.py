"""The ten algorithm pages (docs/<script>.md) share one template, and their "Paper to code" tables name only functions
and classes their script defines, so a page cannot drift from its script unnoticed.

Template: exactly these `## ` headings, in this order (`#` title above, `###` subsections inside are free). "Paper to
code" holds a table whose `code` column names, in backticks, the script's functions (`name`, `name(arg=...)`,
`Class`, `Class.method`), or of a shared module in cleandppo/ (`vit.VisionEncoder`); every row names at least one.
The names are looked up in the source with `ast` (top-level functions and classes, and methods of top-level classes),
not by importing it. Likewise every `--flag` in the first column of a table under "Flags" must be a field of the
script's `Args` (those of arguments.RunArgs included).
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("dppo", "gaussian_ppo", "gmm_ppo", "dawr", "drwr", "dipo", "idql", "dql", "qsm", "exact_likelihood_pg")
HEADINGS = (
    "What it does",
    "Paper to code",
    "Flags",
    "Logged tags",
    "Deviations from the official code",
    "Measured results",
)
SHARED_MODULES = {p.stem for p in (ROOT / "cleandppo").glob("*.py")} - set(SCRIPTS)
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}")


def page_lines(script):
    """The page's lines outside fenced code blocks (a `## ` inside a bash block is not a heading)."""
    lines, fenced = [], False
    for line in (ROOT / "docs" / f"{script}.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def headings(lines):
    return [line[3:].strip() for line in lines if line.startswith("## ")]


def section(lines, heading):
    """The lines under `## heading`, up to the next `## `."""
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def cells(row):
    """The cells of a markdown table row (an escaped \\| stays inside its cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def code_column(lines):
    """[(row, names in backticks of its `code` cell)] of the first table in `lines`."""
    rows = [line for line in lines if line.lstrip().startswith("|")]
    assert len(rows) >= 3, "no table (header, separator, at least one row)"
    header = cells(rows[0])
    assert "code" in header, f"the table has no `code` column: {header}"
    column = header.index("code")
    return [(row, re.findall(r"`([^`]+)`", cells(row)[column])) for row in rows[2:]]


def defined_names(script):
    """Top-level functions and classes of cleandppo/<script>.py, and `Class.method` for their methods."""
    tree = ast.parse((ROOT / "cleandppo" / f"{script}.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {
                f"{node.name}.{n.name}" for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
    return names


def args_fields(script):
    """The field names of cleandppo/<script>.py's `Args` dataclass (the shared arguments.RunArgs ones included)."""
    import dataclasses
    import importlib

    return {field.name for field in dataclasses.fields(importlib.import_module(f"cleandppo.{script}").Args)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_page_has_the_six_template_headings_in_order(script):
    found = headings(page_lines(script))
    assert tuple(found) == HEADINGS, (
        f"docs/{script}.md: its `## ` headings are {found}; the template asks for exactly {list(HEADINGS)}, "
        "in this order (use `###` for subsections)"
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_paper_to_code_names_only_functions_the_script_defines(script):
    lines = page_lines(script)
    assert "## Paper to code" in lines, f"docs/{script}.md has no `## Paper to code` section"
    defined = defined_names(script)
    problems = []
    for row, names in code_column(section(lines, "Paper to code")):
        if not names:
            problems.append(f"a row names no function in its code column: {row}")
        for token in names:
            name = token.split("(", 1)[0].strip()
            if not IDENTIFIER.fullmatch(name):
                problems.append(f"`{token}` in the code column is not a function or class name")
            elif name.split(".")[0] in SHARED_MODULES:  # a shared module's: `vit.VisionEncoder`
                module, _, rest = name.partition(".")
                if rest not in defined_names(module):
                    problems.append(f"`{name}`: cleandppo/{module}.py defines no `{rest}` (update docs/{script}.md)")
            elif name not in defined:
                problems.append(
                    f"`{name}` is named in the Paper to code table but cleandppo/{script}.py defines no function, "
                    f"class or method `{name}` (renamed? update docs/{script}.md)"
                )
    assert not problems, f"docs/{script}.md:\n" + "\n".join(problems)


@pytest.mark.parametrize("script", SCRIPTS)
def test_flags_tables_name_only_flags_the_script_has(script):
    lines = page_lines(script)
    assert "## Flags" in lines, f"docs/{script}.md has no `## Flags` section"
    fields = args_fields(script)
    rows = [line for line in section(lines, "Flags") if line.lstrip().startswith("|")]
    spans = [span for row in rows for span in re.findall(r"`([^`]+)`", cells(row)[0])]
    flags = {flag for span in spans for flag in re.findall(r"--[a-z0-9-]+", span)}
    names = {flag: flag[2:].replace("-", "_") for flag in flags}
    names |= {flag: flag[5:].replace("-", "_") for flag in flags if flag.startswith("--no-")}  # tyro's --no-<bool>
    missing = sorted(flag for flag, name in names.items() if name not in fields)
    assert not missing, (
        f"docs/{script}.md lists {missing} in a Flags table, but cleandppo/{script}.py's Args has no such field "
        f"(renamed? update docs/{script}.md)"
    )


# ---- links between pages ------------------------------------------------------------------------------
def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
    found, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            slug = github_anchor(line.lstrip("#"))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(page: pathlib.Path) -> list:
    """Relative links of a markdown page (outside code blocks) whose file or #anchor does not exist."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in anchors(target)):
            broken.append(link)
    return broken


def test_github_anchor_matches_githubs_rule():
    assert github_anchor(" Fig. A7: fine-tuning efficiency") == "fig-a7-fine-tuning-efficiency"
    assert github_anchor("runs.py: run plumbing") == "runspy-run-plumbing"


MARKDOWN = sorted(
    p for p in ROOT.glob("**/*.md") if not {".git", "runs", ".pytest_cache"} & set(p.relative_to(ROOT).parts)
)


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links {broken_links(page)}"
