"""Container entrypoint of the LEMA training job: `python training_job/train.py --config FILE [--set KEY=VALUE]`.

Launch it with `torchrun` (or `deepspeed`, whose `--local_rank` argument it accepts) for several processes. The job
itself (setup → train → save → cleanup) is `lema.training.job.run_job`, shared with `lema train`.
"""

from __future__ import annotations

import sys

from lema.training.job import main

if __name__ == "__main__":
    sys.exit(main())
