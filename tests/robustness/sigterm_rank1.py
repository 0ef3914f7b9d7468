"""``eksft sft`` under torchrun where the process of rank 1 (only) sends itself SIGTERM during step 2.

Run by ``test_training_faults.test_sigterm_to_one_rank_stops_both_at_the_same_checkpoint``: rank 0 never gets a
signal, so it stops at the same step only if the ranks agree on the stop flag.
"""

import os
import signal
import sys

from eksft.cli import main
from eksft.trainer import EKSFTTrainer

training_step = EKSFTTrainer.training_step


def sigterm_on_rank_1(self, *args, **kwargs):
    if self.args.process_index == 1 and self.state.global_step == 1:  # one micro-batch per step: one signal
        os.kill(os.getpid(), signal.SIGTERM)
    return training_step(self, *args, **kwargs)


EKSFTTrainer.training_step = sigterm_on_rank_1
sys.exit(main(sys.argv[1:]))
