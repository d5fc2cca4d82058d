"""Print the finetuning config reference (markdown) from the config dataclasses themselves.

Every field with its dotted path, default and the comment above it in the source. README.md holds
this output between the `config-reference` markers; tests/test_readme.py checks they are equal.

    python scripts/config_reference.py            # print
    python scripts/config_reference.py --write    # update README.md in place
"""

import ast
import dataclasses
import inspect
import pathlib
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "finetune"))

from config import FinetuneConfig  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def field_comments(cls) -> dict[str, str]:
    """The `# ...` lines right above each field of a dataclass, joined."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign):
            above, row = [], node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            comments[node.target.id] = " ".join(above)
    return comments


def rows(cls=FinetuneConfig, prefix: str = "") -> list[str]:
    comments, defaults, out = field_comments(cls), OmegaConf.structured(cls), []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += rows(type(default), f"{prefix}{f.name}.")
            continue
        value = OmegaConf.to_container(defaults, enum_to_str=True)[f.name]
        shown = "required" if value == "???" else f"`{value}`"
        out.append(f"| `{prefix}{f.name}` | {shown} | {comments.get(f.name, '')} |")
    return out


def reference() -> str:
    return "\n".join([BEGIN, "| key | default | meaning |", "|---|---|---|", *rows(), END])


def main():
    text = reference()
    if "--write" in sys.argv:
        readme = ROOT / "README.md"
        current = readme.read_text()
        start, end = current.index(BEGIN), current.index(END) + len(END)
        readme.write_text(current[:start] + text + current[end:])
    else:
        print(text)


if __name__ == "__main__":
    main()
