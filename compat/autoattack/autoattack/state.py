from pyautoattack.state import EvaluationState  # noqa: F401
