"""The unit tests' shared small models (``unit_models.py``) import from any folder of the tree."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
