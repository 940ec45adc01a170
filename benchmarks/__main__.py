"""``python -m benchmarks [args]`` from the repository root == ``vqkit bench [args]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vqkit.bench import main  # noqa: E402

raise SystemExit(main())
