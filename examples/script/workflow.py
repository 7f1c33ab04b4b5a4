"""A script-mode workflow: a plain Parsl script that loads its own Config.

gcbundle runs it as ``__main__`` on the login node; arguments arrive as
``--name=value`` options (and as JSON in ``GCBUNDLE_ARGS``).

    gcbundle submit examples/script/workflow.py --endpoint local --arg count=4
"""
import argparse
import os

import parsl
from parsl import python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider


@python_app
def double(x):
    return 2 * x


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3)
    args = parser.parse_args()
    config = Config(executors=[HighThroughputExecutor(
        label="htex", max_workers_per_node=2, address="127.0.0.1",
        provider=LocalProvider(init_blocks=1, max_blocks=1),
    )])
    with parsl.load(config):
        values = [double(i).result() for i in range(args.count)]
    out = os.environ.get("GCBUNDLE_OUTPUT_DIR", ".")
    with open(os.path.join(out, "doubled.txt"), "w") as f:
        f.write(" ".join(map(str, values)) + "\n")
    print(f"doubled {len(values)} numbers")
