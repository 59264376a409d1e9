"""atheris fuzz target: symgraph.serialize.loads raises SerializationError or returns."""
import sys

import atheris

with atheris.instrument_imports():
    import symgraph as sg
    from symgraph import serialize


def one(data):
    try:
        serialize.loads(data)
    except sg.SerializationError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
