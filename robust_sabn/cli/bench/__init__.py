"""Benchmarks (``robust-sabn bench ...``): each prints a table of ratios against a baseline run side by side,
variants interleaved so that load drifting on the machine affects all of them alike."""
