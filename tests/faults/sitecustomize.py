"""Test-only fault injection, loaded by Python at start-up when tests put this folder on PYTHONPATH.

DISTIL_TEST_FAULT="WHAT@step=N[,rank=R][,stage=NAME]" makes the first attempt of a watched training process
(the one under a supervisor, or one rank of a multi-process job) fail when it has logged step N (a multiple of --log_every) of the stage
NAME (e.g. TinyBERT's "prediction"; default any) on rank R (default any): WHAT is a signal name it
sends itself (SIGSEGV, SIGKILL, ...) or RuntimeError, which it raises. Nothing happens in any other process.
"""

import os
import signal

_SPEC = os.environ.get("DISTIL_TEST_FAULT", "")

if _SPEC and "DISTIL_WATCH_DIR" in os.environ and os.environ.get("DISTIL_ATTEMPT") == "0":
    _what, _, _where = _SPEC.partition("@")
    _at = dict(item.split("=", 1) for item in _where.split(",") if item)
    if os.environ.get("RANK", "0") == _at.get("rank", os.environ.get("RANK", "0")):
        from distil.train import trainer as _trainer

        _log_losses = _trainer.Trainer._log_losses

        def _failing_log_losses(self, outputs, state, total, progress):
            _log_losses(self, outputs, state, total, progress)
            if state.step == int(_at["step"]) and _at.get("stage", "") in ("", self.extra_state.get("stage")):
                if _what == "RuntimeError":
                    raise RuntimeError(f"injected failure at step {state.step}")
                os.kill(os.getpid(), getattr(signal, _what))

        _trainer.Trainer._log_losses = _failing_log_losses
