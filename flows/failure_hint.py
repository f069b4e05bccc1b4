"""The last line of every failed flow run: whether Retry can help, and what to do instead.

The run's state message names the error; an operator looking at it also needs to know if
the Retry button is worth pressing. The error's kind (`service/faults.py`) decides: a
transient fault was already retried inside the run, so retry once the dependency answers;
bad input fails the same way on every retry; anything else is a defect to report.
"""

from __future__ import annotations

from typing import Any

from prefect.logging.loggers import flow_run_logger

from service.faults import kind_of

TRANSIENT_HINT = (
    "what next: a service this run needs did not answer ({error}); its step was retried "
    "already. Once that service answers, press Retry on this run (every step is idempotent, "
    "and nothing is published half-way)"
)
BAD_INPUT_HINT = (
    "what next: refused as bad input ({error}); a Retry fails the same way. Fix the input "
    "(the parameters, the request, the bucket's object) and start a new run"
)
DEFECT_HINT = (
    "what next: an unexpected error ({error}), a defect: report it with this run's id and the "
    "traceback above; a Retry repeats it unless what caused it changed"
)


def failure_hint(error: BaseException) -> str:
    """The operator's next step for a run that failed with `error`."""
    text = type(error).__name__  # its message is the run's state message, just above
    template = {"transient": TRANSIENT_HINT, "bad-input": BAD_INPUT_HINT}.get(
        kind_of(error), DEFECT_HINT
    )
    return template.format(error=text)


def explain_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_failure` hook of the service's flows: log the hint into the run."""
    error = state.result(raise_on_failure=False)
    if not isinstance(error, BaseException):
        return  # failed without an exception (a failed subflow's state): its run says why
    flow_run_logger(flow_run, flow).error(failure_hint(error))
