"""ctest entry for tests/reference/selfcheck.py: checks the PyTorch reference
(hf_model.py) against an independent loop-based implementation. Needs no lorac."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import selfcheck  # noqa: E402

sys.exit(selfcheck.main())
