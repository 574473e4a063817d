"""The evaluator: pure metric functions and the evaluation job."""
