"""A small function-mode workflow: python apps, a bash app, a data file, an output file.

    gcbundle submit examples/hello/workflow.py --endpoint local --arg n=20 --wait
"""
from __future__ import annotations

import os

from parsl import bash_app, python_app

from stats import summarize

# Data the workflow reads. Its folder travels anyway; this list is what `--only-imports` still ships.
GCBUNDLE_INCLUDE = ["data/words.txt"]


@python_app(cache=True)
def square(x: int) -> int:
    return x * x


@python_app(cache=True)
def word_lengths(path: str) -> list[int]:
    with open(path) as f:
        return [len(w) for w in f.read().split()]


@bash_app
def greet(name: str, stdout: str | None = None) -> str:
    return f"echo hello from $(hostname), {name}"


def main(n: int = 10) -> dict:
    squares = [square(i) for i in range(n)]
    lengths = word_lengths("data/words.txt")
    out_dir = os.environ.get("GCBUNDLE_OUTPUT_DIR", "outputs")
    os.makedirs(out_dir, exist_ok=True)
    greeting = os.path.join(out_dir, "greeting.txt")
    greet("gcbundle", stdout=greeting).result()
    values = [s.result() for s in squares]
    summary = summarize(values)
    with open(os.path.join(out_dir, "squares.csv"), "w") as f:
        f.write("i,square\n")
        f.writelines(f"{i},{v}\n" for i, v in enumerate(values))
    return {"n": n, "sum_of_squares": summary["sum"], "mean": summary["mean"], "word_lengths": lengths.result()}
