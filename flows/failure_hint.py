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


# flows/provision.py resumes every failure but bad input from the registry's record
# (bridge/repository_watch.py), so pressing Retry there is never needed.
RESUMED_HINT = (
    "what next: nothing to do ({error}): the bridge's repository watcher resumes this "
    "provisioning on its own as a new run (after 30 s, doubling, at most 12 times: "
    "provisioning.resume_*); Retry here only does it sooner"
)


def failure_hint(error: BaseException, resumed: bool = False) -> str:
    """The operator's next step for a run that failed with `error`; `resumed`: the service
    runs the operation again by itself unless the input was bad."""
    text = type(error).__name__  # its message is the run's state message, just above
    kind = kind_of(error)
    if resumed and kind != "bad-input":
        return RESUMED_HINT.format(error=text)
    template = {"transient": TRANSIENT_HINT, "bad-input": BAD_INPUT_HINT}.get(kind, DEFECT_HINT)
    return template.format(error=text)


def _log_hint(flow: Any, flow_run: Any, state: Any, resumed: bool) -> None:
    error = state.result(raise_on_failure=False)
    if not isinstance(error, BaseException):
        return  # failed without an exception (a failed subflow's state): its run says why
    flow_run_logger(flow_run, flow).error(failure_hint(error, resumed=resumed))


def explain_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_failure` hook of the service's flows: log the hint into the run."""
    _log_hint(flow, flow_run, state, resumed=False)


def explain_resumed_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """The hook of `provision`, which the repository watcher resumes."""
    _log_hint(flow, flow_run, state, resumed=True)
