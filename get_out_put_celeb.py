"""Evaluate saved CelebAMask-HQ trials; the same command as get_outputs.py (kept for the study's users).

    python get_out_put_celeb.py --exp_name 8_2_multi_seg_male_smile_ --num_trials 5
"""

from __future__ import annotations

import sys

from get_outputs import main

if __name__ == "__main__":
    sys.exit(main())
