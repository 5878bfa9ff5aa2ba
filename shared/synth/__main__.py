"""``python -m shared.synth OUT``: write a default synthetic cohort (see shared.synth.cohort.main)."""

from shared.synth.cohort import main

raise SystemExit(main())
