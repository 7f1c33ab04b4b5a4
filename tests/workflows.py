"""Workflow sources that more than one test file runs, written once.

Each is the text of a ``workflow.py``; ``tests.conftest.write_workflow`` puts
it in a folder to submit.
"""
from __future__ import annotations


def napping(seconds: int) -> str:
    """A run that prints ``started`` once its driver is up, then waits on one
    app that sleeps ``seconds`` (its ``main`` takes ``s`` to change that): long
    enough for a test to wait on it, interrupt it or cancel it while it runs."""
    return f'''
from parsl import python_app


@python_app
def nap(s):
    import time
    time.sleep(s)
    return s


def main(s: int = {seconds}):
    print("started", flush=True)
    return nap(s).result()
'''
