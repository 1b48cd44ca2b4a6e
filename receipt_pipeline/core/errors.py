"""The one base the pipeline's own errors share."""


class ExplainedError(Exception):
    """An error whose message names the item at fault and the problem: the commands show it as one line, with
    no traceback, and a Dagster run shows it as the step's failure."""
