"""What every desam command shares: clean shutdown on SIGINT/SIGTERM and one-line errors."""
import os
import signal
import sys
from typing import Callable, List, Optional

from desam_nnu.errors import DeSAMInputError

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


def _raise_keyboard_interrupt(signum, frame) -> None:
    # Python swallows an exception raised inside an at-fork hook or a finaliser ("Exception
    # ignored in ..."), and nnU-Net forks pools often; so the interrupt is raised again every
    # second until run_command has caught it.
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    raise KeyboardInterrupt(f"signal {signum}")


def _default_signals_in_child() -> None:
    # nnU-Net forks worker pools and stops them with SIGTERM. A Python-level handler only runs
    # between bytecodes, so a worker blocked on an inherited lock would never die and
    # Pool.terminate() would wait forever: forked children get the kernel's defaults back.
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_signals_in_child)


def run_command(work: Callable[[], object]) -> int:
    """Run ``work``; bad input -> 'error: ...' and exit 2, SIGINT/SIGTERM -> cleanup and exit 130.

    SIGTERM is turned into KeyboardInterrupt so that the same ``finally`` blocks and pool context
    managers (which terminate nnU-Net's worker processes) run for both signals.
    """
    for sig in (signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, _raise_keyboard_interrupt)
    try:
        try:
            work()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except DeSAMInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        signal.setitimer(signal.ITIMER_REAL, 0)
        print("interrupted: stopped cleanly, nothing half-written was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def command_main(build_parser: Callable, work: Callable[..., object]) -> Callable[[Optional[List[str]]], int]:
    """A command's ``main(argv)``: parse ``argv`` with ``build_parser()`` and run ``work(**args)`` through
    :func:`run_command` (its exit status)."""
    def main(argv: Optional[List[str]] = None) -> int:
        args = vars(build_parser().parse_args(argv))
        return run_command(lambda: work(**args))
    return main
