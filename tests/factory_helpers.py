"""Recording what a step factory builds, for the tests that compare the programs
compile-check compiles with the ones the drivers run."""

from __future__ import annotations


class Stop(Exception):
    """Stops a driver once its programs are built: nothing samples or trains."""


class Program:
    """A factory-built jitted program that remembers the arguments it was lowered with."""

    def __init__(self, fn, args, kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.lowered_with: list[tuple] = []

    def lower(self, *args):
        self.lowered_with.append(args)
        return self.fn.lower(*args)

    def __call__(self, *args):
        return self.fn(*args)

    def text(self, *args) -> str:
        """The lowered StableHLO of this program on `args`."""
        return self.fn.lower(*args).as_text()


class Recorder:
    """Wraps a step factory: keeps each program it builds; with `stop`, raises `Stop`
    once it has built one."""

    def __init__(self, factory, stop: bool = False):
        self.factory, self.stop = factory, stop
        self.built: list[Program] = []

    def __call__(self, *args, **kwargs):
        program = Program(self.factory(*args, **kwargs), args, kwargs)
        self.built.append(program)
        if self.stop:
            raise Stop
        return program
