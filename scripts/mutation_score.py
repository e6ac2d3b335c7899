"""Summarise the last `mutmut run` per module: killed, survived, no tests, score.

Reads `mutmut results --all true` (lines `module.x_function__mutmut_N: status`). The score is
killed (timeouts count as killed: the mutant made the tests hang) over the mutants that tests
reach; mutants no selected test reaches are listed apart, since they say where tests are missing
rather than how good the existing ones are. Prints a Markdown table, then one machine-readable line.
"""

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

BIN = Path(sys.executable).parent
LINE = re.compile(r"^\s*(?P<name>[\w.ǁ]+)__mutmut_\d+: (?P<status>.+)$")
KILLED = {"killed", "timeout"}


def module_of(name: str) -> str:
    """`gateway.protocol.x_parse_line` or `tenancy.x_switch` -> the module's dotted path."""
    parts = name.split(".")
    while parts and (parts[-1].startswith("x_") or parts[-1].startswith("xǁ")):
        parts.pop()
    return ".".join(parts)


def main() -> int:
    output = subprocess.run(  # noqa: S603 (our own virtualenv's mutmut, fixed arguments)
        [str(BIN / "mutmut"), "results", "--all", "true"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            counts[module_of(match["name"])][match["status"].strip()] += 1
    if not counts:
        print("no mutmut results: run `make mutation` first", file=sys.stderr)
        return 1
    total: Counter[str] = Counter()
    print("| module | mutants | killed | survived | no tests | not checked | score |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        print(row(module, c))
    print(row("**all**", total))
    killed = sum(total[s] for s in KILLED)
    reached = killed + total["survived"]
    score = killed / reached if reached else 0.0
    print(
        f"mutation score={score:.3f} killed={killed} survived={total['survived']} "
        f"no_tests={total['no tests']} not_checked={total['not checked']}"
    )
    return 0


def row(module: str, c: Counter[str]) -> str:
    killed = sum(c[s] for s in KILLED)
    reached = killed + c["survived"]
    score = f"{killed / reached:.0%}" if reached else "-"
    return (
        f"| {module} | {sum(c.values())} | {killed} | {c['survived']} | {c['no tests']} "
        f"| {c['not checked']} | {score} |"
    )


if __name__ == "__main__":
    sys.exit(main())
