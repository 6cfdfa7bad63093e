"""What every desam command shares: clean shutdown on SIGINT/SIGTERM and one-line errors."""
import os
import signal
import sys
from typing import Callable

from desam_nnu.errors import DeSAMInputError

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


_MAIN_PID = os.getpid()


def _raise_keyboard_interrupt(signum, frame) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker inherited the handler: die quietly, as by default
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def run_command(work: Callable[[], object]) -> int:
    """Run ``work``; bad input -> 'error: ...' and exit 2, SIGINT/SIGTERM -> cleanup and exit 130.

    SIGTERM is turned into KeyboardInterrupt so that the same ``finally`` blocks and pool context
    managers (which terminate nnU-Net's worker processes) run for both signals.
    """
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        work()
    except DeSAMInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("interrupted: stopped cleanly, nothing half-written was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
