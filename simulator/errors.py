"""The simulator's errors, each with the exit status `midm-sim` gives it (§8).

SimulatorError            a one-line message the CLI prints instead of a traceback
├── SettingsError   (2)   bad flags or settings (a scenario's own errors are
│                         simulator.scenario's, also exit 2)
└── RunError        (3)   the run could not be done: target unreachable, embedded server
                          failed, generator crashed
"""

from __future__ import annotations


class SimulatorError(Exception):
    exit_code = 3


class SettingsError(SimulatorError):
    exit_code = 2


class RunError(SimulatorError):
    exit_code = 3
