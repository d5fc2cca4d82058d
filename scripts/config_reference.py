"""Print the finetuning config reference (markdown) from the config dataclasses themselves.

Every field with its dotted path, default and the comment above it in the source
(`lact_video.training.config.config_reference`). README.md holds this output between the
`config-reference` markers; tests/test_readme.py checks they are equal.

    python scripts/config_reference.py            # print
    python scripts/config_reference.py --write    # update README.md in place
"""

import pathlib
import sys

from lact_video.training.config import REFERENCE_BEGIN, REFERENCE_END, config_reference

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def main():
    text = config_reference()
    if "--write" in sys.argv:
        current = README.read_text()
        start, end = current.index(REFERENCE_BEGIN), current.index(REFERENCE_END) + len(REFERENCE_END)
        README.write_text(current[:start] + text + current[end:])
    else:
        print(text)


if __name__ == "__main__":
    main()
